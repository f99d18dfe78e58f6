"""The run report: one self-contained HTML page per run, built from the files the run left behind.

Inputs (each optional): ``{name}_run.json`` (plan, events, timings, samples with their prompts),
``{name}_dataset_report.json``, the TensorBoard events of the run, ``sample/*.png`` and the newest
LoRA file. The trainer rewrites the page at each save and at the end; ``tools/run_report.py`` rebuilds
it for any finished or crashed run.

May import: ``library.lora``, ``library.io``, ``library.errors``; matplotlib, Pillow and tensorboard.
"""

from __future__ import annotations

from pathlib import Path

from library.errors import UserError

__all__ = ["report_path", "write_report"]


def report_path(out: str | Path, name: str) -> Path:
    """``{out}/{name}_report.html``."""
    return Path(out) / f"{name}_report.html"


def write_report(out: str | Path, name: str, log_dir: str | None = None, dest: str | Path | None = None) -> Path:
    """Build the report of run ``name`` in folder ``out`` and write it atomically.

    Args:
        out: the run's ``--output_dir``.
        name: its ``--output_name`` (``last`` when it had none).
        log_dir: TensorBoard folder of the run (default: the one in the run record).
        dest: where to write (default :func:`report_path`).

    Returns:
        The path written.
    """
    from library.io.safetensors_io import atomic_path
    from library.report.html import render
    from library.report.lora_stats import lora_summary
    from library.report.sources import collect

    files = collect(out, name, log_dir)
    try:
        lora = lora_summary(files.lora) if files.lora else None
    except UserError:  # not a kohya-style LoRA (another plugin's format): the page goes without its section
        lora = None
    path = Path(dest) if dest else report_path(out, name)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render(files, lora), encoding="utf-8")
    return path
