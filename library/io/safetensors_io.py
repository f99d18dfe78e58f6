"""safetensors reading and writing: headers, atomic writes, and kohya/A1111 hashes.

Hashes (FORMAT.md §6):
* ``sshs_model_hash``: SHA-256 of the data section of ``safetensors.torch.save(tensors, ss_meta)``.
* ``sshs_legacy_hash``: first 8 hex of SHA-256 of bytes ``[0x100000, 0x110000)`` of that same
  serialization with only the ``ss_*`` metadata keys.
* A1111 model hashes of a whole file: old (8 hex of the 1 MiB..1 MiB+64 KiB window) and new (full).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors.torch import save as st_save

from library.errors import UserError

_LEGACY_WINDOW = (0x100000, 0x110000)


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a safetensors header without loading tensors.

    Returns:
        ``(tensors, metadata)``: ``tensors`` maps name to ``{"dtype", "shape", "data_offsets"}``.

    Raises:
        UserError: missing, truncated or malformed file (one line naming it).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{p}: not a safetensors file (only {size} bytes); re-download or re-save it")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise UserError(f"{p}: truncated or not a safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{p}: corrupt safetensors header ({exc.__class__.__name__}); re-download the file") from None
    metadata = header.pop("__metadata__", None) or {}
    data_len = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + data_len > size:
        raise UserError(f"{p}: truncated safetensors file ({size} bytes, needs {8 + n + data_len}); re-download it")
    return header, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` dict of a safetensors file (empty when absent)."""
    return read_header(path)[1]


def load_file(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and metadata of a safetensors file, checking it is complete first."""
    from safetensors import safe_open

    _, metadata = read_header(path)
    with safe_open(str(path), framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def mapped_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of a memory-mapped safetensors file in header order (tensors backed by the
    file's pages; nothing is read until used)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


def stored_dtypes(header: Mapping) -> set[torch.dtype]:
    """The torch dtypes of the floating-point tensors in a header from :func:`read_header`."""
    return {d for d in (_DTYPES.get(v["dtype"]) for v in header.values()) if d is not None and d.is_floating_point}


def read_tensors(path: str | os.PathLike, reuse_buffer: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` reading each tensor from the file (no memory map).

    No file pages stay mapped (and counted in RSS) while a model is converted. Each tensor gets its own
    buffer, or with ``reuse_buffer`` all share one (grown to the largest tensor: no allocation or page
    faults per tensor, no fragmented heap); a shared tensor is valid only until the next one is read, so
    the caller must copy or cast it first. The file is checked for truncation first.
    """
    header, _ = read_header(path)
    shared = bytearray()
    with open(path, "rb") as f:
        base = 8 + struct.unpack("<Q", f.read(8))[0]
        for name, info in header.items():
            start, end = info["data_offsets"]
            size = end - start
            if reuse_buffer and len(shared) < size:
                shared = bytearray(size)
            buf = memoryview(shared)[:size] if reuse_buffer else bytearray(size)
            f.seek(base + start)
            if f.readinto(buf) != size:
                raise UserError(f"{path}: truncated while reading {name}; re-download the file")
            dtype = _DTYPES[info["dtype"]]
            tensor = torch.frombuffer(buf, dtype=dtype) if size else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(info["shape"])


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final`` with the same suffix; rename it into place on success.

    The temporary name is ``.{name}.tmp-{pid}{suffix}`` so writers that pick a format from the
    extension still see it. On an exception while writing, the temporary file is removed and ``final`` is
    untouched. When the finished file cannot take ``final``'s place (``final`` is a folder, say), it is kept
    as ``{name}.unsaved-{pid}{suffix}`` and a :class:`UserError` names both paths: no finished work is lost.

    Raises:
        UserError: the folder cannot be created, or the finished file cannot be renamed to ``final``.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{final.parent}: cannot create this folder ({err.strerror}); "
                        "choose a writable output location") from None
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # some writers (safetensors) create 0600 files; use the normal mode, as kohya's files have
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        _replace_or_keep(tmp, final)
    finally:
        if tmp.is_file():
            tmp.unlink()


def _replace_or_keep(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; if that fails, keep it under a visible name and raise UserError."""
    try:
        os.replace(tmp, final)
    except OSError as err:
        kept = final.with_name(f"{final.stem}.unsaved-{os.getpid()}{final.suffix}")
        os.replace(tmp, kept)
        raise UserError(f"{final}: cannot write it ({err.strerror}); the new file was kept as {kept}") from None


def _ss_only(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}


def _contiguous_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def lora_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> tuple[str, str]:
    """Compute ``(sshs_model_hash, sshs_legacy_hash)`` exactly as kohya does (FORMAT.md §6)."""
    blob = st_save(_contiguous_cpu(tensors), metadata=_ss_only(metadata))
    (n,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + n:]).hexdigest()
    legacy = hashlib.sha256(blob[_LEGACY_WINDOW[0]:_LEGACY_WINDOW[1]]).hexdigest()[:8]
    return model_hash, legacy


def save_lora_file(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                   metadata: Mapping[str, str] | None = None, add_hashes: bool = True) -> None:
    """Write a LoRA state dict atomically: safetensors with metadata and ``sshs_*`` hashes, else ``torch.save``."""
    tensors = _contiguous_cpu(tensors)
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".safetensors":
            meta = {k: str(v) for k, v in (metadata or {}).items()}
            if add_hashes:
                meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(tensors, meta)
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save(tensors, tmp)


def file_model_hashes(path: str | os.PathLike) -> tuple[str, str]:
    """A1111's ``(old 8-hex window hash, new full SHA-256)`` of a model file."""
    full = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            full.update(chunk)
        f.seek(_LEGACY_WINDOW[0])
        window = f.read(_LEGACY_WINDOW[1] - _LEGACY_WINDOW[0])
    return hashlib.sha256(window).hexdigest()[:8], full.hexdigest()


def data_section_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the bytes after the header of a safetensors file (what ``sshs_model_hash`` should be)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
