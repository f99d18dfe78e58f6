"""What a run reports at each optimizer step: kohya's loss scalars, the learning rates, the progress bar.

Learning rates are read from the optimizer's param groups just before ``optimizer.step()``: the values that
step uses, as host floats (no device sync). sd-train: kohya logs ``lr_scheduler.get_last_lr()`` after the
scheduler has stepped, i.e. the rate of the *next* step; here row ``k`` holds the rate of step ``k``, so the
logged list equals the scheduler's own list. Optimizers that adapt a step size ``d`` (D-Adaptation, Prodigy)
also get ``lr/d*lr/{group}`` (kohya's name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _number(value: Any) -> float | None:
    """A Python float of an LR/d value (tensors included), or ``None`` when it has none (Adafactor's ``lr``)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class StepMonitor:
    """Collects one row of scalars per optimizer step and writes them with the loss rows.

    Args:
        accelerator: the run's ``Accelerator`` (its trackers).
        descriptions: one name per param group (``unet``, ``textencoder``, ``group0`` …).
        bar: the tqdm progress bar (``None``: no bar).
    """

    accelerator: Any
    descriptions: list[str]
    bar: Any = None
    pending: dict[int, dict[str, float]] = field(default_factory=dict)
    _before: list[tuple[float | None, float | None]] = field(default_factory=list)

    def before_step(self, optimizer) -> None:
        """Remember each group's ``lr`` (and ``d``) as the optimizer is about to use them."""
        self._before = [(_number(g.get("lr")), _number(g.get("d"))) for g in optimizer.param_groups]

    def after_step(self, step: int, lr_scheduler, skipped_total: int) -> None:
        """Queue the scalars of optimizer step ``step`` (from 1). A group without a numeric ``lr`` (Adafactor with
        ``relative_step``) takes the scheduler's value, which it computes from the step just made."""
        last = list(lr_scheduler.get_last_lr()) if any(lr is None for lr, _ in self._before) else []
        row: dict[str, float] = {}
        for i, (desc, (lr, d)) in enumerate(zip(self.descriptions, self._before)):
            lr = lr if lr is not None else _number(last[i]) if i < len(last) else None
            if lr is None:
                continue
            row[f"lr/{desc}"] = lr
            if d is not None:
                row[f"lr/d*lr/{desc}"] = d * lr  # kohya-compat
        row["sd_train/nonfinite_steps_skipped"] = skipped_total
        self.pending[step] = row

    def bar_lr(self, row: dict[str, float]) -> float | None:
        """The LR the bar shows: the UNet group's, else the first group's."""
        unet = next((d for d in self.descriptions if d.startswith("unet")), None)
        key = f"lr/{unet}" if unet else next((k for k in row if k.startswith("lr/")), None)
        return row.get(key) if key else None

    def write(self, loss_rows: list[tuple[int, float, float]]) -> None:
        """Log the loss rows ``(step, loss/current, loss/average)`` with the queued LR rows; update the bar."""
        by_step: dict[int, dict[str, float]] = {}
        for step, current, average in loss_rows:
            if step in by_step:  # accumulation: several micro-batches at one step, one row each (kohya)
                self.accelerator.log(by_step.pop(step), step=step)
            by_step[step] = {"loss/current": current, "loss/average": average}
        for step in sorted(set(by_step) | set(self.pending)):
            row = {**by_step.get(step, {}), **self.pending.pop(step, {})}
            self.accelerator.log(row, step=step)
            shown = self.bar_lr(row)
            if self.bar is not None and "loss/average" in row:
                postfix = {"avr_loss": f"{row['loss/average']:.4f}"}  # kohya-compat: the bar's moving average
                if shown is not None:
                    postfix["lr"] = f"{shown:.3e}"
                self.bar.set_postfix(postfix)
