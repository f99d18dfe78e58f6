"""Sizes and durations as people read them (shared by the narration, the summary and the report)."""

from __future__ import annotations

import os


def human_size(n: float | None) -> str:
    """``1.2 MB``-style size in decimal units, as file browsers show them (``unknown size`` for None)."""
    if n is None:
        return "unknown size"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def disk_size(path: str | os.PathLike | None) -> int | None:
    """Bytes of a file or of every file below a folder (``None`` when it does not exist)."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def sized(path: str | os.PathLike) -> str:
    """:func:`human_size` of :func:`disk_size`: ``1.2 MB`` for what is at ``path``."""
    return human_size(disk_size(path))


def duration(seconds: float) -> str:
    """``4.2 s``, ``45 s``, ``3m 05s``, ``2h 03m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
