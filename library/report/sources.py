"""The files a run leaves behind, read back for its report: run record, dataset report, TensorBoard
scalars, sample images and the newest LoRA file. Every piece may be missing (a run that crashed early,
a run without ``--logging_dir``); the report then says what is absent instead of failing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RE = re.compile(r"^(?:(?P<name>.+)_)?(?:e(?P<epoch>\d{6})|(?P<step>\d{6}))_(?P<index>\d{2})_\d{14}(?:_\d+)?\.png$")
MODEL_EXTS = (".safetensors", ".ckpt", ".pt")


@dataclass
class Sample:
    """One sample image: file, prompt index, prompt, optimizer step and epoch (end-of-epoch samples)."""

    path: Path
    index: int
    prompt: str = ""
    step: int | None = None
    epoch: int | None = None


@dataclass
class RunFiles:
    """Everything found for one run (``output_name``) in its output folder."""

    out: Path
    name: str
    record: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    lora: Path | None = None
    log_dir: str | None = None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_scalars(log_dir: str | Path | None) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar below ``log_dir``: ``{tag: [(step, value), ...]}`` sorted by step (later
    event files win for a repeated step, as after a resume into the same folder)."""
    if not log_dir or not Path(log_dir).is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    folders = sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")})
    quiet = logging.getLogger("tensorboard")  # it logs "No path found after …" at INFO for a file still open
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        for folder in folders:
            acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                merged.setdefault(tag, {}).update((e.step, e.value) for e in acc.Scalars(tag))
    finally:
        quiet.setLevel(level)
    return {tag: sorted(points.items()) for tag, points in merged.items()}


def _samples_from_record(out: Path, record: dict) -> list[Sample]:
    return [Sample(out / s["path"], s["index"], s.get("prompt", ""), s.get("step"), s.get("epoch"))
            for s in record.get("samples", []) if (out / s["path"]).is_file()]


def _samples_from_folder(out: Path, name: str) -> list[Sample]:
    """Sample images found by their kohya file names (a run without a record)."""
    found = []
    for path in sorted((out / "sample").glob("*.png")):
        m = SAMPLE_RE.match(path.name)
        if m and m.group("name") in ({name, None} if name == "last" else {name}):  # "last": no prefix
            epoch, step = m.group("epoch"), m.group("step")
            found.append(Sample(path, int(m.group("index")), epoch=int(epoch) if epoch else None,
                                step=int(step) if step else None))
    return found


def newest_lora(out: Path, name: str) -> Path | None:
    """The final ``{name}.ext`` when present, else the latest step/epoch file of the run."""
    for ext in MODEL_EXTS:
        if (out / f"{name}{ext}").is_file():
            return out / f"{name}{ext}"
    saved = [p for ext in MODEL_EXTS for p in out.glob(f"{name}-*{ext}") if p.is_file()]
    return max(saved, key=lambda p: p.stat().st_mtime) if saved else None


def collect(out: str | Path, name: str, log_dir: str | None = None) -> RunFiles:
    """Gather the files of run ``name`` in folder ``out`` (``log_dir`` overrides the recorded one)."""
    out = Path(out)
    record = _json(out / f"{name}_run.json")
    files = RunFiles(out, name, record=record, dataset=_json(out / f"{name}_dataset_report.json"))
    files.log_dir = log_dir or record.get("log_dir")
    files.scalars = read_scalars(files.log_dir)
    files.samples = _samples_from_record(out, record) if record else _samples_from_folder(out, name)
    files.lora = newest_lora(out, name)
    return files


def find_runs(out: str | Path) -> list[str]:
    """Output names of the runs in a folder (from their ``*_run.json`` or ``*_dataset_report.json``)."""
    names = {p.name[: -len("_run.json")] for p in Path(out).glob("*_run.json")}
    names |= {p.name[: -len("_dataset_report.json")] for p in Path(out).glob("*_dataset_report.json")}
    return sorted(names)
