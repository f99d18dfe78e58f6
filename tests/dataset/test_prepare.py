"""Pre-pass rules: header-only reads, bucket settings, cache_info, duplicates, CN, face crop."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from PIL import ImageFile

from library.dataset import BucketBatchDataset, CliDefaults, build_plan, prepare
from library.dataset import images as im
from library.errors import UserError


def _prep(path, step=64, **kw):
    return prepare(build_plan(CliDefaults(dataset_config=path, **kw)), seed=0,
                   bucket_step_multiple=step, is_sdxl=step == 32)


def _toml(write_toml, tmp_path, dataset="", subset="", folder="a", second=""):
    return write_toml(f"""
[[datasets]]
resolution = 256
{dataset}
  [[datasets.subsets]]
  image_dir = "{tmp_path}/{folder}"
  {subset}
{second}
""")


def test_prepass_reads_headers_only(tmp_path, make_folder, write_toml, monkeypatch):
    make_folder("a", [(300, 200), (256, 256)])

    def no_decode(self):
        raise AssertionError("pixel data decoded during the pre-pass")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    data = _prep(_toml(write_toml, tmp_path, "enable_bucket = true"))
    assert [r.size for r in data.train[0].records] == [(300, 200), (256, 256)]


def test_bucket_settings_checks(tmp_path, make_folder, write_toml):
    make_folder("a", [(256, 256)])
    with pytest.raises(UserError, match=r"datasets\[0\]\.bucket_reso_steps = 32: must be a "
                                        "multiple of 64 for this model \\(kohya asserts it too\\); use 64"):
        _prep(_toml(write_toml, tmp_path, "enable_bucket = true\nbucket_reso_steps = 32"))
    _prep(_toml(write_toml, tmp_path, "bucket_reso_steps = 32"))  # kohya-compat: unread (and unchecked) without buckets
    data = _prep(_toml(write_toml, tmp_path, "enable_bucket = true\nmin_bucket_reso = 100\n"
                       "max_bucket_reso = 1000\nbucket_reso_steps = 32"), step=32)
    spec = data.train[0].spec
    assert (spec.min_bucket_reso, spec.max_bucket_reso) == (96, 1024)
    assert any("rounded down to 96" in w for w in data.warnings)
    path = _toml(write_toml, tmp_path, "enable_bucket = true\nmin_bucket_reso = 32")
    with pytest.raises(UserError) as err:
        _prep(path)
    assert str(err.value) == (f"{path} datasets[0]: min_bucket_reso 32 is below bucket_reso_steps 64 (it would "
                              "round down to 0); use at least 64")
    with pytest.raises(UserError, match=r"datasets\[0\]: batch_size 0 must be at least 1"):
        _prep(_toml(write_toml, tmp_path, "batch_size = 0"))
    zero = write_toml(f'[[datasets]]\nresolution = [0, 64]\n[[datasets.subsets]]\nimage_dir = "{tmp_path}/a"\n')
    with pytest.raises(UserError, match=r"datasets\[0\]: resolution 0x64 must be positive"):
        _prep(zero)
    with pytest.raises(UserError, match="max_bucket_reso 128 must be >= max"):
        _prep(_toml(write_toml, tmp_path, "enable_bucket = true\nmax_bucket_reso = 128"))


def test_tiny_image_no_upscale_is_an_error(tmp_path, make_folder, write_toml):
    make_folder("a", [(40, 40)])
    with pytest.raises(UserError, match=r"img00\.png: 40x40 is smaller than bucket_reso_steps 64"):
        _prep(_toml(write_toml, tmp_path, "enable_bucket = true\nbucket_no_upscale = true"))


def test_cache_info_written_and_used(tmp_path, make_folder, write_toml):
    folder = make_folder("a", [(256, 256)], captions=["first"])
    path = _toml(write_toml, tmp_path, subset='cache_info = true\n  caption_extension = ".txt"')
    assert _prep(path).train[0].records[0].caption == "first"
    cache = json.load(open(os.path.join(folder, "metadata_cache.json")))
    assert cache == {os.path.join(folder, "img00.png"): {"caption": "first",
                                                         "resolution": [256, 256]}}
    (tmp_path / "a" / "img00.txt").write_text("changed")
    assert _prep(path).train[0].records[0].caption == "first"  # read from the cache


def test_duplicate_subset_ignored_with_warning(tmp_path, make_folder, write_toml):
    make_folder("a", [(256, 256)] * 2)
    dup = f'  [[datasets.subsets]]\n  image_dir = "{tmp_path}/a"\n'
    data = _prep(_toml(write_toml, tmp_path, second=dup))
    assert data.num_train_images == 2 and data.train[0].subsets[1].duplicate
    assert any("appears twice" in w for w in data.warnings)


def test_conditioning_images_must_match(tmp_path, make_folder, write_toml):
    make_folder("a", [(256, 256)] * 2)
    make_folder("m", [(256, 256)])
    path = _toml(write_toml, tmp_path, subset=f'conditioning_data_dir = "{tmp_path}/m"')
    with pytest.raises(UserError, match=r"conditioning images do not match .*missing \['img01'\]"):
        _prep(path, masked_loss=True)
    make_folder("m", [(256, 256)] * 2)
    batch = BucketBatchDataset(_prep(path, masked_loss=True).train, dataset_seed=0)[0]
    assert batch["alpha_masks"].shape == (1, 256, 256)


def test_missing_conditioning_folder_is_named_as_such(tmp_path, make_folder, write_toml):
    make_folder("a", [(256, 256)])
    path = _toml(write_toml, tmp_path, subset=f'conditioning_data_dir = "{tmp_path}/nope"')
    with pytest.raises(UserError) as err:
        _prep(path, masked_loss=True)
    assert str(err.value) == f"{tmp_path}/nope: conditioning_data_dir not found"


def test_regularization_only_dataset_is_one_line(tmp_path, make_folder, write_toml):
    make_folder("a", [(256, 256)])
    path = _toml(write_toml, tmp_path, subset="is_reg = true")
    with pytest.raises(UserError) as err:
        _prep(path)
    assert str(err.value) == (f"{path} datasets[0]: every subset is regularization (is_reg = true); add a subset "
                              "of training images")


def test_color_aug_changes_hue_only_slightly():
    arr = np.full((4, 4, 3), (200, 50, 50), np.uint8)
    out = im.color_aug(arr, random.Random(1))
    assert out.shape == arr.shape and np.abs(out.astype(int) - arr).max() <= 60


def test_face_crop_without_bucketing(tmp_path, make_image, write_toml):
    make_image(tmp_path / "f" / "p_200_150_80_80.png", (400, 300))
    path = _toml(write_toml, tmp_path, folder="f", subset="face_crop_aug_range = [2.0, 4.0]")
    ds = BucketBatchDataset(_prep(path).train, dataset_seed=0)
    batch = ds[0]
    assert batch["images"].shape == (1, 3, 256, 256)
    assert batch["original_sizes_hw"].tolist() == [[256, 256]]
