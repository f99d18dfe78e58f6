"""Tiny single-file checkpoints shared by the model tests (written once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """Session-scoped folder holding the tiny checkpoints."""
    return tmp_path_factory.mktemp("tiny_ckpts")


def _tiny(arch: str, folder):
    from tools.make_tiny_model import make_tiny_checkpoint

    path = folder / f"tiny_{arch}.safetensors"
    if not path.is_file():
        make_tiny_checkpoint(arch, path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_ckpt(tiny_ckpt_dir):
    """Path of a tiny SDXL single-file checkpoint (SGM keys, configs in metadata)."""
    return _tiny("sdxl", tiny_ckpt_dir)


@pytest.fixture(scope="session")
def tiny_sd15_ckpt(tiny_ckpt_dir):
    """Path of a tiny SD1.5 single-file checkpoint (LDM keys, configs in metadata)."""
    return _tiny("sd15", tiny_ckpt_dir)


@pytest.fixture(scope="session")
def tiny_sd2_ckpt(tiny_ckpt_dir):
    """Path of a tiny SD2 single-file checkpoint (OpenCLIP text tower, kohya placeholders)."""
    return _tiny("sd2", tiny_ckpt_dir)
