"""Shared fixtures of the trainer tests: one tiny SDXL checkpoint per session, a dataset per module, and
deterministic torch algorithms for one test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL single-file checkpoint, written once per session (tests only read it)."""
    from tools.make_tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint("sdxl", tmp_path_factory.mktemp("tiny_sdxl") / "tiny_sdxl.safetensors")


@pytest.fixture(scope="module")
def assets(tiny_sdxl, tmp_path_factory) -> tuple[Path, Path]:
    """``(tiny SDXL checkpoint, sample dataset TOML)``; the dataset folder is private to the test module
    (caches written next to its images do not leak into other modules)."""
    from tools.make_sample_dataset import make_sample_dataset

    return tiny_sdxl, make_sample_dataset(tmp_path_factory.mktemp("sample") / "data")


@pytest.fixture(scope="module")
def plain_assets(assets, tmp_path_factory) -> tuple[Path, Path]:
    """``(tiny SDXL checkpoint, TOML)`` over the sample images without repeats: 64×64, batch 2, 64-pixel bucket
    steps (valid for SD1 too), 8 images = 4 steps per epoch."""
    image_dir = next(p for p in assets[1].parent.iterdir() if p.is_dir())
    toml = tmp_path_factory.mktemp("plain") / "plain.toml"
    toml.write_text(f'[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\n'
                    'enable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n')
    return assets[0], toml


@pytest.fixture()
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test (bit-exact comparisons), restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
