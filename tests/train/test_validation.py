"""Validation loss (TRAINING.md §10, CLI.md §10): cadence, logged scalars, no effect on training."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.validation import fixed_timesteps


@pytest.fixture(scope="module")
def assets(tiny_sdxl, tmp_path_factory):
    from tools.make_sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("val")
    ckpt = tiny_sdxl
    image_dir = next(p for p in make_sample_dataset(root / "data").parent.iterdir() if p.is_dir())
    toml = root / "one_repeat.toml"  # 8 images, 1 repeat: 6 train + 2 validation images with split 0.25
    toml.write_text('[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\n'
                    'enable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n')
    return ckpt, toml


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_data_loader_n_workers", "0",
            "--seed", "5", "--learning_rate", "1e-2", "--network_dropout", "0.2", "--noise_offset", "0.05",
            "--network_train_unet_only", "--validation_split", "0.25", *extra]


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(log_dir.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fixed_timesteps():
    assert fixed_timesteps(None, None) == [200, 400, 600, 800]
    assert fixed_timesteps(100, 900) == [260, 420, 580, 740]


def test_step_validation_is_logged_and_does_not_change_training(assets, tmp_path):
    plain, validated = tmp_path / "plain", tmp_path / "validated"
    assert sdxl_main(_args(assets, plain, "--max_train_steps", "2")) == 0  # no epoch ends: no validation
    assert sdxl_main(_args(assets, validated, "--max_train_steps", "2", "--validate_every_n_steps", "1",
                           "--max_validation_steps", "1", "--logging_dir", str(tmp_path / "logs"))) == 0
    a, _ = load_file(plain / "last.safetensors")
    b, _ = load_file(validated / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scalars = _scalars(tmp_path / "logs")
    steps = scalars["loss/validation/step_average"]
    assert [s for s, _ in steps] == [1, 2] and all(v > 0 for _, v in steps)
    averages = dict(scalars["loss/average"])
    for (step, value), (_, divergence) in zip(steps, scalars["loss/validation/step_divergence"]):
        assert divergence == pytest.approx(value - averages[step], abs=1e-5)
    assert "loss/validation/epoch_average" not in scalars


def test_epoch_validation_every_n_epochs(assets, tmp_path):
    out = tmp_path / "out"  # 6 training images, batch 2: 3 steps per epoch
    assert sdxl_main(_args(assets, out, "--max_train_epochs", "2", "--validate_every_n_epochs", "2",
                           "--logging_dir", str(tmp_path / "logs"))) == 0
    scalars = _scalars(tmp_path / "logs")
    assert [s for s, _ in scalars["loss/validation/epoch_average"]] == [2]
    assert [s for s, _ in scalars["loss/validation/epoch_divergence"]] == [2]
    assert "loss/validation/step_average" not in scalars
    assert load_file(out / "last.safetensors")[1]["ss_num_validation_images"] == "2"
