"""Helpers of the dataset-tool tests: small generated images with captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(32, 24), color=(200, 30, 30)) -> Path:
    """A solid-colour RGB PNG/JPEG of ``size = (w, h)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path)
    return path


def write_dataset(root: Path, captions: dict[str, str], ext: str = ".txt") -> dict[str, Path]:
    """One image per ``{relative stem: caption}`` (a ``None`` caption writes no caption file)."""
    out = {}
    for stem, caption in captions.items():
        img = write_image(root / f"{stem}.png")
        if caption is not None:
            img.with_suffix(ext).write_text(caption + "\n", encoding="utf-8")
        out[stem] = img
    return out
