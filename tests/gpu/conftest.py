"""Fixtures of the CUDA tests: the tiny SDXL checkpoint, the sample dataset, trainer runs and a CPU reference.

Nothing here touches CUDA or imports optional packages at import time, so the folder collects on a CPU-only
machine (where every test in it is skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


@dataclass
class Run:
    """One finished tiny-SDXL training run.

    Attributes:
        trainer: the :class:`sd_train.trainer.Trainer` after ``train()`` (accelerate state already reset).
        weights: tensors of ``last.safetensors``. meta: its metadata. out: the output folder.
    """

    trainer: object
    weights: dict
    meta: dict
    out: Path


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """``(checkpoint, dataset TOML)``: tiny SDXL single file and the 8-image 64 px sample dataset."""
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("gpu_assets")
    return make_tiny_checkpoint("sdxl", root / "tiny_sdxl.safetensors"), make_sample_dataset(root / "data")


def base_flags(tiny_sdxl, out: Path, *extra: str) -> list[str]:
    """Flags of every GPU run: UNet + text-encoder LoRA rank 4, ``STEPS`` steps, seed 11."""
    ckpt, toml = tiny_sdxl
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "2",
            "--max_train_steps", str(STEPS), "--max_data_loader_n_workers", "0", "--seed", "11",
            "--learning_rate", "1e-3", *extra]


@pytest.fixture()
def train_sdxl(tiny_sdxl, tmp_path):
    """``train_sdxl(*flags) -> Run``: the entry point's steps (parse, family, setup, train, cleanup) in-process,
    keeping the trainer for inspection; asserts the run wrote a finite ``last.safetensors``."""
    from library.io.safetensors_io import load_file
    from sd_train.cli import parse_options
    from sd_train.families.base import family_kwargs
    from sd_train.families.sdxl import SdxlFamily
    from sd_train.trainer import Trainer

    def run(*flags: str, name: str = "out") -> Run:
        out = tmp_path / name
        options = parse_options(base_flags(tiny_sdxl, out, *flags), "sdxl")
        trainer = Trainer(options, SdxlFamily(**family_kwargs(options)))
        assert trainer.setup()
        try:
            trainer.train()
        finally:
            trainer.cleanup()
        weights, meta = load_file(out / "last.safetensors")
        assert weights and all(bool(torch.isfinite(v.float()).all()) for v in weights.values())
        return Run(trainer, weights, meta, out)

    return run


def _run_script(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture()
def run_script():
    """``run_script(args, env=None) -> CompletedProcess``: ``python ARGS`` in the repository root, output kept."""
    return _run_script


@pytest.fixture()
def flags(tiny_sdxl):
    """``flags(out, *extra) -> list[str]``: the common flags of every GPU run (see :func:`base_flags`)."""
    return lambda out, *extra: base_flags(tiny_sdxl, Path(out), *extra)


@pytest.fixture(scope="session")
def cpu_reference_keys(tiny_sdxl, tmp_path_factory) -> set[str]:
    """Key set of ``last.safetensors`` from the same network trained 1 step on the CPU (CUDA hidden)."""
    from library.io.safetensors_io import read_header

    out = tmp_path_factory.mktemp("cpu_reference")
    flags = base_flags(tiny_sdxl, out, "--max_train_steps", "1")
    done = _run_script(["sdxl_train_network.py", *flags], env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    tensors, _ = read_header(out / "last.safetensors")
    return set(tensors)


def _lora_moved(weights: dict) -> bool:
    ups = [v for k, v in weights.items() if k.endswith("lora_up.weight")]
    return bool(ups) and any(bool(u.float().abs().sum() > 0) for u in ups)


@pytest.fixture()
def lora_moved():
    """``lora_moved(weights) -> bool``: some ``lora_up`` (zero at init) is no longer zero after training."""
    return _lora_moved
