"""Dataset report, ss_* metadata dicts and tools/check_dataset.py (DATASET.md §11, FORMAT.md §4)."""

from __future__ import annotations

import json

from library.dataset import CliDefaults, build_plan, prepare
from library.errors import run_cli
from tools import check_dataset


def _toml(tmp_path, make_folder, write_toml):
    make_folder("a", [(1000, 800), (1920, 1080), (800, 1200)], captions=["Dog, grass", "dog"])
    make_folder("reg", [(1024, 1024)] * 2)
    return write_toml(f"""
[[datasets]]
resolution = 1024
batch_size = 2
enable_bucket = true
  [[datasets.subsets]]
  image_dir = "{tmp_path}/a"
  caption_extension = ".txt"
  class_tokens = "sks"
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = "{tmp_path}/reg"
  is_reg = true
""")


def test_report_numbers(tmp_path, make_folder, write_toml):
    path = _toml(tmp_path, make_folder, write_toml)
    data = prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=32,
                   is_sdxl=True)
    rep = data.report()
    ds = rep["datasets"][0]
    assert (ds["num_images"], ds["num_train_images"], ds["num_reg_images"], ds["reg_samples"]) == (
        5, 6, 2, 6)
    sub = ds["subsets"][0]
    assert (sub["img_count"], sub["captions_found"], sub["captions_missing"]) == (3, 2, 1)
    buckets = {tuple(b["resolution"]): b for b in ds["buckets"]}
    assert {k: b["count"] for k, b in buckets.items()} == {
        (704, 1024): 2, (1024, 576): 2, (1024, 832): 2, (1024, 1024): 6}
    assert buckets[(1024, 576)]["upscaled"] == 0 and buckets[(1024, 1024)]["upscaled"] == 0
    assert buckets[(1024, 832)]["max_trim"] == 1 - (1024 * 832) / (1040 * 832)
    assert rep["steps_per_epoch"] == 1 + 1 + 1 + 3
    img = next(e for e in ds["images"] if e["original_size"] == [1000, 800])
    assert img["bucket"] == [1024, 832] and img["resized"] == [1040, 832]
    assert img["crop_ltrb"] == [8, 0, 1032, 832] and img["crop_top_left"] == [6, 0]
    text = data.format_report()
    assert "bucket (1024, 832): 2 samples, 1 batches" in text and "steps per epoch" in text


def test_metadata_fields_with_config(tmp_path, make_folder, write_toml):
    path = _toml(tmp_path, make_folder, write_toml)
    data = prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=32,
                   is_sdxl=True)
    meta = data.metadata_fields()
    assert meta["ss_num_train_images"] == 6 and meta["ss_num_reg_images"] == 2
    assert json.loads(meta["ss_dataset_dirs"]) == {"a": {"n_repeats": 2, "img_count": 3}}
    assert json.loads(meta["ss_tag_frequency"]) == {"a": {"dog": 2, "grass": 1, "sks": 1},
                                                   "reg": {}}
    (ds,) = json.loads(meta["ss_datasets"])
    assert ds["is_dreambooth"] is True and ds["batch_size_per_device"] == 2
    assert ds["resolution"] == [1024, 1024] and len(ds["subsets"]) == 2
    assert ds["subsets"][0]["image_dir"] == "a" and ds["subsets"][0]["class_tokens"] == "sks"
    assert ds["subsets"][1]["is_reg"] is True
    assert ds["bucket_info"]["buckets"]["0"] == {"resolution": [704, 1024], "count": 2}
    assert "ss_bucket_info" not in meta


def test_check_dataset_tool_json(tmp_path, make_folder, write_toml, capsys):
    path = _toml(tmp_path, make_folder, write_toml)
    assert run_cli(check_dataset.main, ["--dataset_config", path, "--json", "--sdxl"]) == 0
    doc = json.loads(capsys.readouterr().out)
    images = doc["datasets"][0]["images"]
    assert set(images[0]) == {"path", "bucket", "resized", "crop_ltrb", "original_size",
                              "crop_top_left"}
    assert {"resolution", "count"} <= set(doc["datasets"][0]["buckets"][0])


def test_check_dataset_tool_error_one_line(tmp_path, write_toml, capsys):
    path = write_toml("[[datasets]]\nresolution = 512\n  [[datasets.subsets]]\n  imagedir = 'x'\n")
    assert run_cli(check_dataset.main, ["--dataset_config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'imagedir'. Did you mean 'image_dir'?" in err


def test_check_dataset_applies_the_no_bucket_size_rule_unless_latents_are_cached(tmp_path, make_folder, write_toml,
                                                                                   capsys):
    make_folder("a", [(96, 64)])
    path = write_toml(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{tmp_path}/a"\n')
    assert run_cli(check_dataset.main, ["--dataset_config", path]) == 2
    assert "img00.png: image too large (96x64 > resolution 64x64)" in capsys.readouterr().err
    assert run_cli(check_dataset.main, ["--dataset_config", path, "--cache_latents"]) == 0
