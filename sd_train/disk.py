"""Writes that fail (a full disk, a quota, an I/O error) without losing the run.

Every file and state folder is written to a temporary name and renamed (``atomic_path``,
``atomic_state_dir``), so a failed write leaves the files written before it untouched. This module turns the
failure into one line that names the file, the bytes it needed and what is still there, and writes the
in-memory weights to ``--fallback_output_dir`` when one is given. An intermediate save that fails is
reported and the run goes on; a final (or interrupted-run) save that fails everywhere ends the run (exit 1).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from library.errors import UserError, first_line

logger = logging.getLogger(__name__)
# torch.save reports a full disk as RuntimeError ("inline_container.cc ... unexpected pos"), safetensors as
# SafetensorError ("No space left on device"), plain writes as OSError.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
FINAL_KINDS = ("final", "interrupted")
HEADER_ALLOWANCE = 64 * 1024  # safetensors header and metadata of a LoRA file (an upper estimate)


class WriteFailedError(UserError):
    """A final save could not be written anywhere; the message says what is kept."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


def human(n: float) -> str:
    """``1.5 MB``-style size (decimal units, as ``df -H`` prints them)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def existing_parent(path: str | Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (where a new folder would be made)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem of ``path`` (its nearest existing parent); -1 when unknown."""
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return -1


def tensors_bytes(tensors, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``tensors`` stored as ``dtype`` (their own dtype when ``None``)."""
    return sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors if isinstance(t, torch.Tensor))


def lora_bytes(network, dtype: torch.dtype | None) -> int:
    """Size of the network's file: its state dict in ``dtype`` plus the header."""
    return tensors_bytes(network.state_dict().values(), dtype) + HEADER_ALLOWANCE


def state_bytes(trainer) -> int:
    """Size of a state folder: the network in fp32 plus the optimizer's state tensors."""
    optimizer_state = [v for st in trainer.optimizer.state.values() for v in st.values()]
    return lora_bytes(trainer.host.network, torch.float32) + tensors_bytes(optimizer_state)


def _kept_note(trainer) -> str:
    last = getattr(trainer, "last_saved", None)
    if last is not None:
        return f"the files written before are intact (newest LoRA: {last})"
    return "the files written before are intact (no LoRA was written earlier in this run)"


def write_guarded(trainer, path: Path, write: Callable[[Path], object], needed: int, *, final: bool,
                  what: str = "LoRA") -> Path | None:
    """Run ``write(target)`` for ``path``; on a write error try ``--fallback_output_dir``, then report.

    Args:
        trainer: the running trainer (options, ``last_saved``).
        path: the file or folder to write.
        write: writes one target path (atomically: nothing is left behind when it raises).
        needed: about how many bytes the write needs (for the message).
        final: the run's last save (final or interrupted): a failure everywhere raises instead of warning.
        what: ``"LoRA"`` or ``"state"`` (the newest LoRA is remembered for later messages).

    Returns:
        The path written, or ``None`` when an intermediate save failed (a warning was logged).

    Raises:
        WriteFailedError: a final save failed on the output folder and on the fallback folder (if any).
    """
    try:
        write(path)
        return _written(trainer, path, what)
    except WRITE_ERRORS as exc:
        line = (f"{path}: could not be written ({first_line(exc)}); it needs about {human(needed)} and "
                f"{human(free_bytes(path.parent))} are free there; {_kept_note(trainer)}")
    fallback = trainer.opts.saving.fallback_output_dir
    if fallback:
        target = Path(fallback) / path.name
        try:
            Path(fallback).mkdir(parents=True, exist_ok=True)
            write(target)
            logger.warning("%s; written to --fallback_output_dir instead: %s", line, target)
            return _written(trainer, target, what)
        except WRITE_ERRORS as exc:
            line += f"; the --fallback_output_dir copy failed too ({first_line(exc)})"
    if final:
        raise WriteFailedError(line + "; free some space (or pass --fallback_output_dir) and resume from the "
                               "newest state folder, if any")
    logger.warning("%s; training goes on", line)
    return None


def _written(trainer, path: Path, what: str) -> Path:
    if what == "LoRA":
        trainer.last_saved = path
    return path
