"""``--dry_run`` on every ``dataset_configs/`` example: exit 0, the dataset report and the plan, no model
loaded, nothing written. The plan's step numbers are checked against the dataset report's batch count."""

from __future__ import annotations

import glob
import math
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "dataset_configs")
EXAMPLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.toml")))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny SD1.5 and SDXL single files (their headers feed the plan's size estimate)."""
    from tools.make_tiny_model import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {"sd": make_tiny_checkpoint("sd15", root / "sd15.safetensors"),
            "sdxl": make_tiny_checkpoint("sdxl", root / "sdxl.safetensors")}


def test_examples_found():
    assert len(EXAMPLES) >= 5 and "dreambooth_reg.toml" in EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_dry_run_prints_the_plan_and_loads_nothing(name, example_folders, checkpoints, monkeypatch, capsys,
                                                   plan_numbers):
    import library.checkpoint.io as cio
    from sd_train.entry import entry_point
    from tools.make_sample_dataset import make_sample_dataset

    monkeypatch.chdir(example_folders)  # the examples' relative image folders resolve here
    make_sample_dataset(example_folders / "sample_data", example_folders / "unused.toml")
    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    entry = "sdxl" if "sdxl" in name else "sd"
    out_dir = example_folders / "out"
    code = entry_point(entry, ["--dry_run", "--dataset_config", os.path.join(ROOT, name),
                               "--pretrained_model_name_or_path", str(checkpoints[entry]),
                               "--output_dir", str(out_dir), "--network_module", "networks.lora",
                               "--network_dim", "8", "--max_train_epochs", "3", "--save_every_n_epochs", "1"])
    out = capsys.readouterr().out
    assert code == 0
    batches = int(re.search(r"steps per epoch \(1 process, no accumulation\): (\d+)", out).group(1))
    per_epoch, epochs, total = plan_numbers(out)
    assert (per_epoch, epochs, total) == (batches, 3, 3 * batches)
    assert "  saves       every 1 epoch(s): 2 file(s) like epoch-000001.safetensors, keeps all" in out
    assert f"base model {checkpoints[entry]} (" in out and "networks.lora, dim 8 alpha 1" in out
    assert not out_dir.exists()  # a dry run writes nothing, not even the output folder
