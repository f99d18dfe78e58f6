"""The toy world: a synthetic picture world (shapes in a few colours) and the tiny base models trained on it
from scratch, so that a LoRA can be seen and tested to teach something new (``tools/make_toy_world.py``).

May import: ``library.models``, ``library.checkpoint``, ``library.text``.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "toy"  # the committed toy checkpoints


def asset_path(name: str) -> Path:
    """The toy checkpoint ``assets/toy/toy_<name>.safetensors`` of a ``make_tiny_model`` arch (committed: ``sdxl``)."""
    return ASSETS / f"toy_{name}.safetensors"
