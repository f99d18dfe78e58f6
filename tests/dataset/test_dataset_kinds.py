"""Dataset settings checked per dataset kind, as kohya checks them (issue #18, class 5).

kohya asserts ``bucket_reso_steps % 64`` (SD1/SD2) or ``% 32`` (SDXL) through ``verify_bucket_reso_steps``,
which reads the dataset's own ``bucket_reso_steps``: a DreamBooth / fine-tuning dataset sets it only with
``enable_bucket``, and a ControlNet-style (masked_loss, ``conditioning_data_dir``) dataset never sets it (its
DreamBooth delegate holds the steps), so kohya checks neither. The dataset TOML below is the kohya_ss GUI's
test/config/dataset-masked_loss.toml (paths and sizes adapted), trained there on runwayml SD1.5.
"""

from __future__ import annotations

import pytest

from library.dataset import CliDefaults, build_plan, prepare
from library.errors import UserError

GUI_MASKED_LOSS = """
[[datasets]]
resolution = 96
batch_size = 4
keep_tokens = 1
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 1024
bucket_reso_steps = 32
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = '{root}/img/10_darius kawasaki person'
  num_repeats = 10
  caption_extension = '.txt'
  {mask_line}
"""


def _prepare(path, step, masked_loss=True):
    plan = build_plan(CliDefaults(dataset_config=path, masked_loss=masked_loss))
    return prepare(plan, seed=0, bucket_step_multiple=step, is_sdxl=step == 32)


def _gui_dataset(tmp_path, make_folder, write_toml, mask=True):
    make_folder("img/10_darius kawasaki person", [(96, 64), (64, 64)], captions=["a man", "a man"])
    make_folder("masks", [(96, 64), (64, 64)])
    mask_line = f"conditioning_data_dir = '{tmp_path}/masks'" if mask else ""
    return write_toml(GUI_MASKED_LOSS.format(root=tmp_path, mask_line=mask_line))


def test_masked_loss_dataset_with_32_steps_runs_on_sd15(tmp_path, make_folder, write_toml):
    data = _prepare(_gui_dataset(tmp_path, make_folder, write_toml), step=64)
    ds = data.train[0]
    assert ds.spec.kind == "CN" and ds.spec.bucket_reso_steps == 32
    assert sorted({b for b, _ in ds.buckets}) == [(64, 64), (96, 64)]  # 96 = 3 x 32: a 32-pixel step
    assert ("datasets[0].bucket_reso_steps = 32 is not a multiple of 64; kohya does not check it for conditioning "
            "(masked_loss) datasets, so buckets use 32-pixel steps") in data.warnings


def test_dreambooth_dataset_with_32_steps_is_refused_on_sd15(tmp_path, make_folder, write_toml):
    path = _gui_dataset(tmp_path, make_folder, write_toml, mask=False)
    with pytest.raises(UserError) as err:
        _prepare(path, step=64, masked_loss=False)
    assert str(err.value) == (f"{path} datasets[0].bucket_reso_steps = 32: must be a multiple of 64 for this model "
                              "(kohya asserts it too); use 64")
    assert _prepare(path, step=32, masked_loss=False).train[0].spec.bucket_reso_steps == 32  # SDXL: fine


def test_steps_unread_without_buckets(tmp_path, make_folder, write_toml):
    make_folder("a", [(64, 64)])
    path = write_toml(f'[[datasets]]\nresolution = 64\nbucket_reso_steps = 48\n[[datasets.subsets]]\n'
                      f'image_dir = "{tmp_path}/a"\n')
    assert _prepare(path, step=64, masked_loss=False).train[0].spec.bucket_reso_steps == 48


def test_command_line_steps_are_named_as_the_flag(tmp_path, make_folder):
    make_folder("train/5_cat", [(64, 64)])
    plan = build_plan(CliDefaults(train_data_dir=str(tmp_path / "train"), resolution="64", enable_bucket=True,
                                  min_bucket_reso=64, bucket_reso_steps=32))
    with pytest.raises(UserError, match=r"^--bucket_reso_steps 32: must be a multiple of 64 for this model"):
        prepare(plan, seed=0, bucket_step_multiple=64, is_sdxl=False)


def test_zero_steps_with_buckets_fail_for_every_kind(tmp_path, make_folder, write_toml):
    text = _gui_dataset(tmp_path, make_folder, write_toml)
    path = write_toml(open(text).read().replace("bucket_reso_steps = 32", "bucket_reso_steps = 0"), "zero.toml")
    with pytest.raises(UserError, match=r"datasets\[0\]\.bucket_reso_steps = 0: must be a positive multiple of 64"):
        _prepare(path, step=64)


def test_conditioning_and_dreambooth_subsets_cannot_share_a_dataset(tmp_path, make_folder, write_toml):
    """kohya reads a dataset where not every subset has conditioning_data_dir as DreamBooth, whose subset schema
    rejects conditioning_data_dir: it fails, so sd-train stops with one line."""
    make_folder("a", [(64, 64)])
    make_folder("m", [(64, 64)])
    path = write_toml(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{tmp_path}/a"\n'
                      f'conditioning_data_dir = "{tmp_path}/m"\n[[datasets.subsets]]\nimage_dir = "{tmp_path}/a"\n')
    with pytest.raises(UserError) as err:
        _prepare(path, step=64)
    assert str(err.value) == (f"{path}: 1 error(s): datasets[0]: subsets with and without conditioning_data_dir "
                              "cannot be mixed in one dataset; split them into two [[datasets]]")


def test_masked_loss_readme_subset_is_a_conditioning_subset(tmp_path, make_folder, write_toml):
    """kohya's docs/masked_loss_README.md subset, as written there (paths adapted)."""
    make_folder("a_zundamon", [(64, 64)], captions=["zundamon"])
    make_folder("a_zundamon_mask", [(64, 64)])
    path = write_toml(f"""[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]
image_dir = "{tmp_path}/a_zundamon"
caption_extension = ".txt"
conditioning_data_dir = "{tmp_path}/a_zundamon_mask"
num_repeats = 8
""")
    ds = _prepare(path, step=64).train[0]
    assert ds.spec.kind == "CN" and ds.spec.subsets[0].num_repeats == 8


def test_fine_tuning_dataset_table_rejects_dreambooth_keys(tmp_path, make_folder, write_toml):
    """kohya's fine-tuning dataset schema has no caption_extension / class_tokens / cache_info (an error there);
    [general] may carry them for the DreamBooth datasets of the file."""
    make_folder("a", [(64, 64)])
    (tmp_path / "md.json").write_text('{"img00.png": {"caption": "a cat"}}', encoding="utf-8")
    subset = f'[[datasets.subsets]]\nimage_dir = "{tmp_path}/a"\nmetadata_file = "{tmp_path}/md.json"\n'
    path = write_toml(f'[[datasets]]\nresolution = 64\ncaption_extension = ".txt"\n{subset}')
    with pytest.raises(UserError) as err:
        build_plan(CliDefaults(dataset_config=path))
    assert str(err.value) == (f"{path}: 1 error(s): datasets[0]: key 'caption_extension' is not allowed in a FT "
                              "dataset (only DB/CN)")
    path = write_toml(f'[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 64\n{subset}', "ok.toml")
    assert build_plan(CliDefaults(dataset_config=path)).datasets[0].kind == "FT"


def test_network_multiplier_may_be_an_integer(tmp_path, write_toml):
    """kohya's schema wants a float (``network_multiplier = 1`` fails there); sd-train reads 1 as 1.0."""
    path = write_toml('[[datasets]]\nresolution = 64\nnetwork_multiplier = 1\n[[datasets.subsets]]\nimage_dir = "a"\n')
    assert build_plan(CliDefaults(dataset_config=path)).datasets[0].network_multiplier == 1.0


CONFIG_README_DREAMBOOTH = {  # kohya docs/config_README-en.md example, DreamBooth part (paths adapted)
    "general": {"shuffle_caption": True, "caption_extension": ".txt", "keep_tokens": 1},
    "datasets": [{"resolution": 512, "batch_size": 4, "keep_tokens": 2, "subsets": [
        {"image_dir": "hoge", "class_tokens": "hoge girl"},
        {"image_dir": "fuga", "class_tokens": "fuga boy", "keep_tokens": 3},
        {"is_reg": True, "image_dir": "reg", "class_tokens": "human", "keep_tokens": 1}]}],
}


def test_dataset_config_json_reads_like_toml(tmp_path, write_toml):
    import json

    toml_path = write_toml("""[general]\nshuffle_caption = true\ncaption_extension = '.txt'\nkeep_tokens = 1\n
[[datasets]]\nresolution = 512\nbatch_size = 4\nkeep_tokens = 2\n
  [[datasets.subsets]]\n  image_dir = 'hoge'\n  class_tokens = 'hoge girl'\n
  [[datasets.subsets]]\n  image_dir = 'fuga'\n  class_tokens = 'fuga boy'\n  keep_tokens = 3\n
  [[datasets.subsets]]\n  is_reg = true\n  image_dir = 'reg'\n  class_tokens = 'human'\n  keep_tokens = 1\n""")
    json_path = tmp_path / "data.json"
    json_path.write_text(json.dumps(CONFIG_README_DREAMBOOTH), encoding="utf-8")
    from_toml = build_plan(CliDefaults(dataset_config=toml_path)).datasets
    from_json = build_plan(CliDefaults(dataset_config=str(json_path))).datasets
    assert from_toml == from_json
    assert [s.keep_tokens for s in from_json[0].subsets] == [2, 3, 1] and from_json[0].subsets[2].is_reg


def test_dataset_config_with_another_extension_is_read_as_toml(tmp_path, write_toml):
    """kohya refuses a dataset config that ends neither in .toml nor .json; sd-train reads it as TOML."""
    path = write_toml('[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "a"\n', "data.cfg")
    assert build_plan(CliDefaults(dataset_config=path)).datasets[0].resolution == (64, 64)
