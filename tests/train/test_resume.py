"""Bit-exact resume (TRAINING.md §11): 2 steps + resume + 2 steps == 4 steps, fp32 on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main


def _args(ckpt, toml, out, *extra):
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
            "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
            "--max_train_steps", "4", "--max_data_loader_n_workers", "0", "--seed", "3",
            "--learning_rate", "1e-2", "--network_dropout", "0.1", "--noise_offset", "0.05",
            "--save_state_on_train_end", *extra]


def test_two_plus_resume_plus_two_equals_four(tmp_path, deterministic):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sdxl", tmp_path / "tiny.safetensors")
    toml = make_sample_dataset(tmp_path / "data")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert sdxl_main(_args(ckpt, toml, full, "--save_every_n_steps", "2", "--save_state")) == 0
    state = full / "at-step00000002-state"
    info = json.loads((state / "train_state.json").read_text())
    assert info["current_step"] == 2 and info["sd_train"]["batch_index_in_epoch"] == 2
    assert sdxl_main(_args(ckpt, toml, resumed, "--resume", str(state))) == 0

    a, _ = load_file(full / "last.safetensors")
    b, meta = load_file(resumed / "last.safetensors")
    assert meta["ss_steps"] == "4"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = torch.load(full / "last-state" / "sd_train_resume.pt", weights_only=True)
    rb = torch.load(resumed / "last-state" / "sd_train_resume.pt", weights_only=True)
    assert ra["loss_slots"] == rb["loss_slots"] and len(ra["loss_slots"]) == 4
    assert torch.equal(ra["noise_gen"], rb["noise_gen"])
    oa = torch.load(full / "last-state" / "optimizer.bin", weights_only=True)
    ob = torch.load(resumed / "last-state" / "optimizer.bin", weights_only=True)
    for key, value in oa["state"].items():
        assert all(torch.equal(value[k], ob["state"][key][k]) for k in value)


def test_resume_with_changed_options_is_refused(tmp_path, capsys):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sdxl", tmp_path / "tiny.safetensors")
    toml = make_sample_dataset(tmp_path / "data")
    assert sdxl_main(_args(ckpt, toml, tmp_path / "a", "--max_train_steps", "1")) == 0
    code = sdxl_main(_args(ckpt, toml, tmp_path / "b", "--resume", str(tmp_path / "a" / "last-state"),
                           "--seed", "4"))
    assert code == 2 and "different options" in capsys.readouterr().err


def test_resume_across_epochs_with_accumulation_workers_and_caption_randomness(tmp_path, deterministic):
    """6 steps == 3 + resume + 3 with gradient accumulation 2, an epoch boundary before the resume point
    and after it, random captions and flips decoded in two persistent DataLoader workers."""
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sdxl", tmp_path / "tiny.safetensors")
    sample = make_sample_dataset(tmp_path / "data")
    image_dir = next(p for p in sample.parent.iterdir() if p.is_dir()).as_posix()
    toml = tmp_path / "random.toml"
    toml.write_text(
        "[general]\nshuffle_caption = true\ncaption_dropout_rate = 0.3\nflip_aug = true\ncaption_extension = '.txt'\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\nenable_bucket = true\nmin_bucket_reso = 32\n"
        f"max_bucket_reso = 128\nbucket_reso_steps = 32\n[[datasets.subsets]]\nimage_dir = '{image_dir}'\n"
        "num_repeats = 1\nclass_tokens = 'sks shape'\n", encoding="utf-8")
    extra = ["--max_train_steps", "6", "--gradient_accumulation_steps", "2", "--max_data_loader_n_workers", "2",
             "--persistent_data_loader_workers"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert sdxl_main(_args(ckpt, toml, full, *extra, "--save_every_n_steps", "3", "--save_state")) == 0
    state = full / "at-step00000003-state"
    info = json.loads((state / "train_state.json").read_text())
    progress = info["sd_train"]
    assert info["current_step"] == 3 and progress["epoch_index"] == 1 and progress["batch_index_in_epoch"] > 0  # mid
    assert progress["num_train_epochs"] == 3  # ... of the second epoch, a third one after the resume
    assert sdxl_main(_args(ckpt, toml, resumed, *extra, "--resume", str(state))) == 0
    a, _ = load_file(full / "last.safetensors")
    b, meta = load_file(resumed / "last.safetensors")
    assert meta["ss_steps"] == "6"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
