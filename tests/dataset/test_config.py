"""Dataset TOML schema, fallback chain, folder convention and --in_json (DATASET.md §2-3)."""

from __future__ import annotations

import json
import os

import pytest

from library.dataset import CliDefaults, build_plan
from library.errors import UserError


def _plan(path, **kw):
    return build_plan(CliDefaults(dataset_config=path, **kw))


def _error(path, **kw) -> str:
    before = set(os.listdir(os.path.dirname(path)))
    with pytest.raises(UserError) as exc:
        _plan(path, **kw)
    assert set(os.listdir(os.path.dirname(path))) == before  # nothing written
    message = str(exc.value)
    assert "\n" not in message and message.startswith(path)
    return message


def test_cli_defaults_are_kohyas():
    d = CliDefaults()
    assert (d.caption_extension, d.min_bucket_reso, d.max_bucket_reso, d.bucket_reso_steps) == (
        ".caption", 256, 1024, 64)
    assert (d.train_batch_size, d.dataset_repeats, d.token_warmup_min, d.caption_separator) == (
        1, 1, 1, ",")
    assert d.resolution is None and d.enable_bucket is False and d.prior_loss_weight == 1.0


def test_fallback_chain_subset_dataset_general_cli_default(write_toml):
    path = write_toml("""
[general]
keep_tokens = 2
caption_extension = "txt"
[[datasets]]
resolution = [1024, 768]
keep_tokens = 3
  [[datasets.subsets]]
  image_dir = "a"
  keep_tokens = 4
  [[datasets.subsets]]
  image_dir = "b"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "c"
""")
    plan = _plan(path, resolution="512", train_batch_size=3, shuffle_caption=True,
                 dataset_repeats=2)
    a, b = plan.datasets[0].subsets
    c = plan.datasets[1].subsets[0]
    assert (a.keep_tokens, b.keep_tokens, c.keep_tokens) == (4, 3, 2)
    assert a.caption_extension == ".txt"  # leading dot added
    assert plan.datasets[0].resolution == (1024, 768) and plan.datasets[1].resolution == (512, 512)
    assert plan.datasets[1].batch_size == 3 and c.num_repeats == 2  # renamed CLI flags
    assert c.shuffle_caption is True and c.token_warmup_min == 1 and c.flip_aug is False
    assert plan.mode == "config" and plan.datasets[0].kind == "DB"


def test_unknown_key_with_path_and_hint(write_toml):
    path = write_toml("""
[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = "a"
  [[datasets.subsets]]
  image_dir = "b"
  num_repeat = 3
""")
    msg = _error(path)
    assert "datasets[0].subsets[1]: unknown key 'num_repeat'. Did you mean 'num_repeats'?" in msg


def test_all_errors_reported_at_once(write_toml):
    path = write_toml("""
foo = 1
[genral]
[general]
image_dir = "x"
alpha_mask = true
[[datasets]]
validation_split = 0
batch_size = "4"
resize_interpolation = "fancy"
  [[datasets.subsets]]
  image_dir = "a"
  num_repeats = 0
  [[datasets.subsets]]
  metadata_file = "m.json"
  class_tokens = "dog"
[[datasets]]
resolution = 512
  [[datasets.subsets]]
  class_tokens = "dog"
[[datasets]]
resolution = 512
""")
    msg = _error(path)
    assert "error(s)" in msg
    expected = [
        "top level: unknown key 'foo'",
        "top level: unknown key 'genral'; only [general] and [[datasets]] are allowed. Did you "
        "mean 'general'?",
        "general: key 'image_dir' is not allowed in [general]; put it in [[datasets.subsets]]",
        "general: key 'alpha_mask' is not allowed in [general]",
        "datasets[0].validation_split: expected a float (write 0.0, not 0), got 0",
        "datasets[0].batch_size: expected an integer, got '4'",
        "datasets[0].resize_interpolation: 'fancy' is not one of lanczos,",
        "datasets[0].subsets[0].num_repeats: must be >= 1, got 0",
        "datasets[0].subsets[1]: key 'class_tokens' is not allowed in a FT subset",
        "datasets[0]: DreamBooth subset and fine tuning subset cannot be mixed",
        "datasets[1].subsets[0]: image_dir is required",
        "datasets[2]: empty dataset",
    ]
    for part in expected:
        assert part in msg, part


def test_key_at_wrong_level_subset_only_dataset_key(write_toml):
    path = write_toml("""
[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = "a"
  batch_size = 2
""")
    assert "datasets[0].subsets[0]: key 'batch_size' is not allowed in [[datasets.subsets]]; " \
        "put it in [general] or [[datasets]]" in _error(path)


def test_conditioning_dir_only_with_masked_loss(write_toml):
    path = write_toml("""
[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = "a"
  conditioning_data_dir = "m"
""")
    assert _error(path).endswith("datasets[0].subsets[0]: conditioning_data_dir (mask images) needs masked_loss = "
                                 "true in the training options; kohya rejects the key without it")
    plan = _plan(path, masked_loss=True)
    assert plan.datasets[0].kind == "CN"


def test_missing_resolution_and_parse_errors(write_toml, tmp_path):
    path = write_toml('[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "a"\n')
    assert "datasets[0]: resolution is not set" in _error(path)
    bad = write_toml("[[datasets]\n", name="bad.toml")
    assert "cannot parse dataset config" in _error(bad)
    with pytest.raises(UserError, match="not found"):
        _plan(str(tmp_path / "missing.toml"))


def test_json_config_and_warning_for_ignored_flags(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"datasets": [{"resolution": [640, 512],
                                               "subsets": [{"image_dir": "a"}]}]}))
    plan = _plan(str(path), train_data_dir="x")
    assert plan.datasets[0].resolution == (640, 512)
    assert plan.warnings == ["--dataset_config given: ignoring --train_data_dir"]


def test_folder_convention(tmp_path, make_image):
    for name in ("10_sks dog", "2_a_b_c", "notes", "0_zero"):
        make_image(tmp_path / "train" / name / "x.png")
    make_image(tmp_path / "reg" / "1_dog" / "r.png")
    plan = build_plan(CliDefaults(train_data_dir=str(tmp_path / "train"),
                                  reg_data_dir=str(tmp_path / "reg"), resolution="512"))
    subs = plan.datasets[0].subsets
    assert [(s.num_repeats, s.class_tokens, s.is_reg) for s in subs] == [
        (10, "sks dog", False), (2, "a_b_c", False), (1, "dog", True)]
    assert len(plan.warnings) == 2 and plan.mode == "folders"


def test_folder_convention_image_folder_itself(tmp_path, make_image):
    make_image(tmp_path / "imgs" / "a.png")
    with pytest.raises(UserError, match=r"--train_data_dir .*imgs: no `N_name` subfolders found; did you mean its "
                                        r"parent\?"):
        build_plan(CliDefaults(train_data_dir=str(tmp_path / "imgs"), resolution="512"))


def test_in_json_plan(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"image_path": "a.png", "caption": "x"}\n')
    plan = build_plan(CliDefaults(in_json=str(meta), train_data_dir=str(tmp_path),
                                  resolution="1024,768", dataset_repeats=3))
    sub = plan.datasets[0].subsets[0]
    assert (sub.kind, sub.num_repeats, sub.metadata_file) == ("FT", 3, str(meta))
    assert plan.datasets[0].resolution == (1024, 768) and plan.datasets[0].kind == "FT"


def test_no_data_at_all():
    with pytest.raises(UserError, match="no training data"):
        build_plan(CliDefaults(resolution="512"))
