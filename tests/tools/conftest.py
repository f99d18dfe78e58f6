"""Helpers for the LoRA tool tests: golden key lists, random LoRAs, tiny checkpoints, running tools."""

from __future__ import annotations

import functools
import gzip
import types
from pathlib import Path

import pytest
import torch

from library.io.safetensors_io import save_lora_file

DATA = Path(__file__).parent / "data"


@functools.lru_cache(maxsize=None)
def golden(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a golden TSV (copied, gzipped, from the spec's data folder)."""
    out = {}
    with gzip.open(DATA / f"{name}.tsv.gz", "rt") as f:
        for line in f:
            key, _, shape = line.rstrip("\n").split("\t")
            out[key] = tuple(int(x) for x in shape.split("x")) if shape else ()
    return out


def module_shapes(name: str) -> dict[str, tuple[tuple, tuple]]:
    """``{module: (down shape at rank 4, up shape at rank 4)}`` of a golden LoRA list."""
    keys = golden(name)
    return {k[: -len(".lora_down.weight")]: (s, keys[k[: -len("lora_down.weight")] + "lora_up.weight"])
            for k, s in keys.items() if k.endswith(".lora_down.weight")}


def random_lora(name: str, rank: int, count: int | None = None, seed: int = 0, alpha: float | None = None,
                dtype=torch.float32, select=None, max_elems: int | None = None) -> dict[str, torch.Tensor]:
    """Random kohya tensors for (a subset of) the modules of a golden list, at ``rank``.

    ``max_elems`` skips modules whose dense ``out × in·k·k`` product is larger (keeps dense references fast).
    """
    gen = torch.Generator().manual_seed(seed)
    mods = sorted(module_shapes(name).items())
    if select is not None:
        mods = [m for m in mods if select(m[0])]
    if max_elems is not None:
        mods = [m for m in mods if m[1][1][0] * (torch.Size(m[1][0]).numel() // 4) <= max_elems]
    if count is not None:
        step = max(1, len(mods) // count)
        mods = mods[::step][:count]
    out = {}
    for mod, (ds, us) in mods:
        ds, us = (rank, *ds[1:]), (us[0], rank, *us[2:])
        out[f"{mod}.lora_down.weight"] = (torch.randn(ds, generator=gen) / ds[1] ** 0.5).to(dtype)
        out[f"{mod}.lora_up.weight"] = (torch.randn(us, generator=gen) * 0.1).to(dtype)
        out[f"{mod}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank / 2), dtype=torch.float32)
    return out


def lora_for_checkpoint(shapes: dict, family: str, rank: int, seed: int = 0, conv: bool = True) -> dict:
    """Random kohya tensors for every target of a (tiny) checkpoint."""
    from library.lora.convert import checkpoint_targets

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, (key, chunk) in checkpoint_targets(shapes, family, conv).items():
        shape = shapes[key]
        rows = shape[0] // 3 if chunk is not None else shape[0]
        down_shape = (rank, *shape[1:])
        up_shape = (rows, rank, 1, 1) if len(shape) == 4 else (rows, rank)
        out[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=gen) * 0.1
        out[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=gen) * 0.1
        out[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
    return out


def save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    """Write a LoRA with hashes."""
    save_lora_file(tensors, path, metadata or {"ss_network_dim": "4", "ss_training_comment": "test"})
    return path


def run(module, *argv) -> int:
    """Run ``tools.<module>.main`` with string arguments; returns the exit code."""
    return module.main([str(a) for a in argv])


@functools.lru_cache(maxsize=None)
def _tiny(arch: str, folder: str) -> Path:
    from tools.make_tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint(arch, Path(folder) / f"tiny_{arch}.safetensors", seed=1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """``tiny_ckpt(arch)`` -> path of a cached tiny single-file checkpoint (sd15, sd2, sdxl)."""
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    return lambda arch: _tiny(arch, str(folder))


@pytest.fixture
def kit():
    """Namespace of the helper functions above."""
    return types.SimpleNamespace(golden=golden, module_shapes=module_shapes, random_lora=random_lora,
                                 lora_for_checkpoint=lora_for_checkpoint, save=save, run=run)

