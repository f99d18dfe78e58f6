"""The learning rate a run will use at its first step, its peak and its last step, before any model loads.

The run's own scheduler factory (:func:`sd_train.optim.build_scheduler`) drives a one-parameter SGD whose
base LR is 1, so the preview is the real schedule's multiplier curve; each group's LR is its base LR times
it. The value at optimizer step ``k`` is the one that step uses (accelerate steps the scheduler once per
process per optimizer step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from library.errors import UserError
from sd_train.options.base import resolve_step_count

ADAPTIVE = ("dadapt", "prodigy")


@dataclass
class LrPreview:
    """Schedule summary: ``groups`` maps a group name to ``(start, peak, peak step, end)``."""

    scheduler: str
    warmup_steps: int
    groups: dict[str, tuple[float, float, int, float]] = field(default_factory=dict)
    note: str = ""


def _base_lrs(o) -> dict[str, float]:
    """Base LR per group as the network host forms them (``unet`` / ``textencoder``)."""
    te = o.text_encoder_lr
    te_lrs = [te] if isinstance(te, (int, float)) else list(te or [])
    groups = {"unet": o.unet_lr if o.unet_lr is not None else o.learning_rate}
    if len(te_lrs) > 1:
        groups.update({f"textencoder{i + 1}": lr for i, lr in enumerate(te_lrs)})
    else:
        groups["textencoder"] = te_lrs[0] if te_lrs else o.learning_rate
    return groups


def multipliers(o, max_train_steps: int, num_processes: int = 1) -> list[float]:
    """LR multiplier of every optimizer step 1..``max_train_steps`` under the run's scheduler options."""
    from sd_train.optim import build_scheduler, resolve_lr_scheduler

    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    name = resolve_lr_scheduler(o.optimizer_type, o.optimizer_args, o.lr_scheduler, 1.0)
    scheduler = build_scheduler(optimizer, name, num_training_steps=max_train_steps,
                                num_warmup_steps=o.lr_warmup_steps or 0, num_decay_steps=o.lr_decay_steps or 0,
                                num_cycles=o.lr_scheduler_num_cycles, power=o.lr_scheduler_power,
                                timescale=o.lr_scheduler_timescale, min_lr_ratio=o.lr_scheduler_min_lr_ratio,
                                scheduler_type=o.lr_scheduler_type or "", scheduler_args=o.lr_scheduler_args,
                                num_processes=num_processes)
    if type(scheduler) is torch.optim.lr_scheduler.LambdaLR:  # diffusers' and transformers' schedules: the
        fn = scheduler.lr_lambdas[0]  # multiplier itself, without stepping (a scheduler step costs ~0.1 ms)
        return [float(fn(k * num_processes)) for k in range(max_train_steps)]
    optimizer.step()  # once, so that torch does not warn about the scheduler stepping first
    values, group = [], optimizer.param_groups[0]
    for _ in range(max_train_steps):
        values.append(float(group["lr"]))
        for _ in range(num_processes):
            scheduler.step()
    return values


def preview_lr(o, max_train_steps: int, num_processes: int = 1) -> LrPreview:
    """Summarise the schedule of optimizer options ``o`` for the plan (never raises for a bad scheduler:
    the run itself reports that, with its own message)."""
    name = (o.optimizer_type or "AdamW").lower()
    warmup = resolve_step_count(o.lr_warmup_steps, max_train_steps * num_processes)
    preview = LrPreview(o.lr_scheduler_type or o.lr_scheduler, warmup)
    if "schedulefree" in name:
        preview.scheduler, preview.note = "none", "schedule-free optimizer: constant LR, no scheduler"
    elif name == "adafactor" and "relative_step=False" not in "".join(o.optimizer_args or []).replace(" ", ""):
        preview.scheduler, preview.note = "adafactor", "Adafactor relative step: the optimizer sets the LR"
        return preview
    try:
        curve = [1.0] * max_train_steps if preview.scheduler == "none" else multipliers(o, max_train_steps,
                                                                                          num_processes)
    except (UserError, TypeError, ValueError, ImportError) as err:
        preview.note = f"LR curve not previewed ({err})"
        return preview
    peak_index = max(range(len(curve)), key=curve.__getitem__)
    for group, base in _base_lrs(o).items():
        preview.groups[group] = (base * curve[0], base * curve[peak_index], peak_index + 1, base * curve[-1])
    if name.startswith(ADAPTIVE):
        preview.note = "adaptive optimizer: the effective LR is d × lr"
    return preview
