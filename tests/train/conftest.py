"""Shared fixtures of the trainer tests: one tiny SDXL checkpoint per session, a dataset per module."""

from __future__ import annotations

from pathlib import Path

import pytest


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
