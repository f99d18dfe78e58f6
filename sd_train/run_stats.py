"""Bookkeeping behind the narration: the run record, step clock, losses, memory and the report call."""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

import torch

from sd_train import eta

logger = logging.getLogger("sd_train.narration")
RECORD_VERSION = 1


def new_record(name: str, plan, report: dict) -> dict:
    """The run record at the start: plan, empty event lists, trigger words of the dataset."""
    from sd_train.summary import trigger_words

    return {"version": RECORD_VERSION, "output_name": name, "status": "running",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "started_epoch_seconds": time.time(),
            "plan": plan.as_dict(), "trigger_words": trigger_words(report), "steps_done": 0,
            "files": [], "samples": [], "epochs": [], "validation": [], "nan_skips": [],
            "loss": {"count": 0, "sum": 0.0, "last": None, "last_average": None}, "network": None,
            "timing": {}, "memory": {}, "log_dir": None}


class Clock:
    """Wall-clock time of each optimizer step, leaving out the time spent saving, sampling, validating."""

    def __init__(self):
        self.last = time.perf_counter()
        self.durations: list[float] = []
        self.save_seconds: list[float] = []
        self.image_seconds: list[float] = []

    def resume(self) -> None:
        """Start timing the next step now."""
        self.last = time.perf_counter()

    def step_done(self, device=None, sync: bool = False) -> None:
        """Record one step; ``sync`` waits for queued CUDA work first (exact, used for the first steps)."""
        if sync and device is not None and getattr(device, "type", "") == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.durations.append(now - self.last)
        self.last = now

    @property
    def step_seconds(self) -> float:
        """Median step time, the first step (warm-up) left out when there are others."""
        return eta.median(self.durations[1:] or self.durations)


def network_size(network) -> tuple[int, int]:
    """``(LoRA modules, trainable parameters)`` of a network plugin's module tree."""
    modules = sum(1 for m in network.modules() if hasattr(m, "lora_down") or hasattr(m, "lora_up"))
    params = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return modules, params


def add_losses(totals: dict, rows: list[tuple[int, float, float]]) -> dict:
    """Running sum/count of the micro-batch losses and the last ``(current, average)``."""
    for _, current, average in rows:
        totals = {"count": totals["count"] + 1, "sum": totals["sum"] + current, "last": current,
                  "last_average": average}
    return totals


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports kB


def refresh(record: dict, clock: Clock) -> None:
    """Update the record's timings and peak memory (RSS; VRAM on CUDA)."""
    record["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["timing"] = {"elapsed_seconds": time.time() - record["started_epoch_seconds"],
                        "median_step_seconds": clock.step_seconds, "steps_timed": len(clock.durations),
                        "median_save_seconds": eta.median(clock.save_seconds),
                        "sample_image_seconds": eta.median(clock.image_seconds)}
    memory = {"peak_rss_bytes": _peak_rss()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["peak_vram_bytes"] = torch.cuda.max_memory_allocated()
    record["memory"] = memory


def log_dir(trainer) -> str | None:
    """This run's TensorBoard folder (``{logging_dir}/{prefix}{time}``), when it logs."""
    if not trainer.opts.logging.logging_dir or not hasattr(trainer, "accelerator"):
        return None
    return str(trainer.accelerator.project_dir)


def flush_trackers(trainer) -> None:
    """Make the TensorBoard events written so far readable (its writer buffers up to 2 minutes)."""
    for tracker in getattr(getattr(trainer, "accelerator", None), "trackers", None) or []:
        writer = getattr(tracker, "writer", None)
        if callable(getattr(writer, "flush", None)):
            writer.flush()


def write_report(out: Path, name: str) -> Path | None:
    """Rewrite ``{name}_report.html``; a failure is a warning, never the end of a run."""
    try:
        from library.report import write_report as build

        return build(out, name)
    except Exception as err:  # noqa: BLE001 - the report must never cost a run its files
        logger.warning("run report not written: %s: %s", err.__class__.__name__, err)
        return None
