"""Reading a weights file whatever its format: ``.safetensors`` (with metadata) or a torch pickle loaded with
``weights_only=True``, so that no file can run code when it is read."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from library.errors import UserError
from library.io.safetensors_io import load_file


def read_weights(path: str | os.PathLike, missing: str = "file not found") -> tuple[object, dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file, else ``(whatever torch stored, {})`` of a ``.ckpt`` /
    ``.pt`` / ``.pth`` / ``.bin`` file read with ``weights_only=True``.

    Raises:
        UserError: ``"{path}: {missing}"`` when there is no such file; one line when the torch file cannot be
            read without unpickling code (or is not a torch file).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {missing}")
    if p.suffix.lower() == ".safetensors":
        return load_file(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True), {}
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a user-facing file problem
        raise UserError(f"{p}: cannot be read as a weights-only torch file ({exc.__class__.__name__}; sd-train "
                        "loads them with weights_only=True and never runs pickled code); convert it to "
                        ".safetensors") from None
