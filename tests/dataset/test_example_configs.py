"""Every dataset_configs/*.toml loads and validates end to end.

The example files use paths relative to the folder training runs from. This test builds those
folders (tiny images, captions, metadata) in a temp folder, resolves the relative paths against
it (``build_plan(..., base_dir=...)``) and runs the whole pre-pass. ``sample_sdxl.toml`` (a
teammate's file) is validated in schema-only mode when present.
"""

from __future__ import annotations

import glob
import json
import os

import pytest

from library.dataset import CliDefaults, build_plan, prepare
from library.dataset.plan import load_config_file, plan_from_data

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "dataset_configs")
MINE = ["dreambooth_reg.toml", "sdxl_multi_aspect.toml", "finetune_metadata.toml",
        "two_resolutions.toml"]


def test_all_examples_present():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.toml"))}
    assert set(MINE) <= names


@pytest.mark.parametrize("name", MINE)
def test_example_loads_and_prepares(name, tmp_path, example_folders):
    plan = build_plan(CliDefaults(dataset_config=os.path.join(ROOT, name)), base_dir=str(tmp_path))
    data = prepare(plan, seed=1, bucket_step_multiple=32 if "sdxl" in name else 64,
                   is_sdxl="sdxl" in name)
    assert data.num_train_images > 0 and data.report()["steps_per_epoch"] > 0
    fields = data.metadata_fields()
    assert set(fields) >= {"ss_datasets", "ss_tag_frequency", "ss_dataset_dirs"}


def test_example_specifics(tmp_path, example_folders):

    def load(name):
        plan = build_plan(CliDefaults(dataset_config=os.path.join(ROOT, name)),
                          base_dir=str(tmp_path))
        return prepare(plan, seed=1, bucket_step_multiple=64, is_sdxl=True)

    db = load("dreambooth_reg.toml")
    assert (db.num_train_images, db.num_reg_images) == (30, 4)
    assert sum(r.num_repeats for r in db.train[0].records if r.is_reg) == 30
    sdxl = load("sdxl_multi_aspect.toml")
    assert sdxl.num_validation_images == 1 and sdxl.num_train_images == 9 * 2 + 2
    two = load("two_resolutions.toml")
    assert [d.spec.resolution for d in two.train] == [(512, 512), (768, 768)]
    assert json.loads(two.metadata_fields()["ss_dataset_dirs"]) == {
        "sks_cat": {"n_repeats": 5, "img_count": 2}, "sks_cat (2)": {"n_repeats": 5,
                                                                   "img_count": 2}}
    ft = load("finetune_metadata.toml")
    assert [r.caption for r in ft.train[0].records] == ["a girl,1girl, solo",
                                                        "landscape ||| sky, clouds"]


def test_teammate_sample_schema_only():
    path = os.path.join(ROOT, "sample_sdxl.toml")
    if not os.path.exists(path):
        pytest.skip("sample_sdxl.toml not written yet")
    plan = plan_from_data(load_config_file(path), CliDefaults(), path, schema_only=True)
    assert plan.datasets
