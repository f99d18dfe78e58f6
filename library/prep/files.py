"""Files of the dataset tools: image discovery, caption paths, header checks and atomic text writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from library.dataset import scan
from library.errors import UserError
from library.io.safetensors_io import atomic_path


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Images in ``folder`` (and its subfolders with ``recursive``), sorted by path.

    The extensions are the trainer's (:func:`library.dataset.scan.image_extensions`); hidden files
    (names starting with ``.``, such as our own temporary files) are skipped.

    Raises:
        UserError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found; pass the folder that holds the images")
    exts = scan.image_extensions()
    walk = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def check_images(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    """``{path: (w, h)}`` from the headers; the first corrupt or unreadable file is a one-line UserError."""
    return {p: scan.check_image(str(p)) for p in paths}


def caption_path(image: Path, extension: str) -> Path:
    """The caption file next to ``image``: same stem, ``extension`` (``.txt``, ``.caption``)."""
    return image.with_name(image.stem + extension)


def normalize_extension(extension: str) -> str:
    """``txt`` -> ``.txt`` (kohya accepts the extension with or without its dot in practice)."""
    return extension if extension.startswith(".") else "." + extension


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) through a temporary file and a rename: never half-written."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if needed and probe it with a temporary file, so a read-only place fails
    before any model loads.

    Raises:
        UserError: the folder cannot be created or written (one line naming it).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise UserError(f"{folder}: cannot write to this {what} ({err.strerror}); "
                        "choose a writable location or fix its permissions") from None


def existing_outputs(paths: list[Path], hint: str) -> None:
    """UserError when any of ``paths`` exists: names the count, the first one and ``hint`` (the flag to pass)."""
    found = [p for p in paths if p.exists()]
    if found:
        raise UserError(f"{found[0]}: {len(found)} output file(s) already exist; {hint}")
