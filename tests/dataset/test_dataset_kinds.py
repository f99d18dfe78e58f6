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
    with pytest.raises(UserError, match=r"^--bucket_reso_steps = 32: must be a multiple of 64 for this model"):
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
