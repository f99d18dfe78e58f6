"""Optimizer and LR-scheduler factory by kohya name (TRAINING.md §8, §9).

Optional packages (bitsandbytes, lion-pytorch, dadaptation, prodigyopt, schedulefree,
transformers) are imported only when their optimizer is asked for; a missing one is a
:class:`UserError` naming the pip package.
"""

from __future__ import annotations

import ast
import logging
from typing import Any

import torch

from library.errors import UserError, first_line
from sd_train.class_names import resolve_lr_scheduler_type, resolve_optimizer
from sd_train.options.base import resolve_step_count

logger = logging.getLogger(__name__)

def parse_kv_args(args: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` strings whose values are Python literals (split at the first ``=``).

    Args:
        args: e.g. ``["weight_decay=0.01", "betas=(0.9,0.99)"]``.
        flag: Flag name for error messages (``--optimizer_args``).

    Raises:
        UserError: A missing ``=`` or a value that is not a Python literal.
    """
    out: dict[str, Any] = {}
    for item in args or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r}: expected key=value")
        try:
            out[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise UserError(f"{flag} {item!r}: the value is not a Python literal (strings need quotes)") from exc
    return out


def check_optimizer(optimizer_type: str) -> None:
    """Pre-flight: ``--optimizer_type`` resolves and its package imports (UserError naming the pip package)."""
    resolve_optimizer(optimizer_type)


def _adafactor_kwargs(kwargs: dict, lr: float | None) -> float | None:
    """kohya's Adafactor rules; returns the LR to pass (``None`` with relative_step)."""
    kwargs.setdefault("relative_step", True)  # kohya-compat
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        logger.warning("Adafactor: warmup_init needs relative_step; setting relative_step=True")
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return lr
    if lr:
        logger.warning("Adafactor with relative_step: --learning_rate %s is the initial LR of the "
                       "adafactor scheduler; --unet_lr / --text_encoder_lr are ignored", lr)
    return None


def _warn_adaptive(name: str, lr: float, param_groups: list) -> None:
    if lr <= 0.1:
        logger.warning("%s: learning rate %s is low; adaptive optimizers expect about 1.0", name, lr)
    lrs = {g.get("lr", lr) for g in param_groups if isinstance(g, dict)}
    if len(lrs) > 1:
        logger.warning("%s: parameter groups have different learning rates %s", name, sorted(lrs))


def build_optimizer(param_groups: list, optimizer_type: str, learning_rate: float,
                    optimizer_args: list[str] | None) -> tuple[torch.optim.Optimizer, str]:
    """Build the optimizer by kohya name.

    Args:
        param_groups: Parameters or parameter-group dicts (each may carry its own ``lr``).
        optimizer_type: kohya name (case-insensitive), dotted class path, or torch.optim name.
            ``""`` means AdamW.
        learning_rate: ``--learning_rate`` (passed as ``lr``).
        optimizer_args: ``--optimizer_args`` strings (``key=value`` literals).

    Returns:
        ``(optimizer, ss_optimizer)``, e.g. ``torch.optim.adamw.AdamW(weight_decay=0.01)``.
    """
    cls, nesterov = resolve_optimizer(optimizer_type)
    kwargs = parse_kv_args(optimizer_args, "--optimizer_args")
    lr: float | None = learning_rate
    extra: dict[str, Any] = {}
    if nesterov:
        if "momentum" not in kwargs:
            logger.warning("%s: momentum is not set; using momentum=0.9", optimizer_type)
            kwargs["momentum"] = 0.9  # kohya-compat
        extra["nesterov"] = True
    if cls.__name__ == "Adafactor":
        lr = _adafactor_kwargs(kwargs, lr)
    if cls.__name__.startswith("DAdapt") or cls.__name__ == "Prodigy":
        _warn_adaptive(cls.__name__, learning_rate, list(param_groups))
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs, **extra)
    except (TypeError, ValueError) as exc:  # e.g. an unknown --optimizer_args key, a negative learning rate
        raise UserError(f"--optimizer_type {optimizer_type or 'AdamW'}: {first_line(exc)}; "
                        "check --learning_rate and --optimizer_args") from exc
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()  # schedule-free optimizers start in train mode
    description = f"{cls.__module__}.{cls.__name__}"
    if kwargs:
        description += "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return optimizer, description


def allow_fp16_unscale(scaler) -> None:
    """``--full_fp16``: let accelerate's ``GradScaler`` unscale fp16 gradients, which torch refuses by default.

    kohya-compat: kohya patches the scaler the same way (``patch_accelerator_for_fp16_training``). No-op
    without a scaler (bf16, fp32, CPU).

    Args:
        scaler: ``accelerator.scaler`` (a ``torch.amp.GradScaler``) or ``None``.
    """
    if scaler is None:
        return
    unscale = scaler._unscale_grads_

    def unscale_allowing_fp16(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale_allowing_fp16


def resolve_lr_scheduler(optimizer_type: str, optimizer_args: list[str] | None, lr_scheduler: str,
                         learning_rate: float) -> str:
    """kohya's scheduler override: Adafactor with relative_step uses ``adafactor:<lr>``."""
    if (optimizer_type or "").lower() != "adafactor":
        return lr_scheduler
    kwargs = parse_kv_args(optimizer_args, "--optimizer_args")
    relative = kwargs.get("relative_step", True) or kwargs.get("warmup_init", False)
    return f"adafactor:{learning_rate}" if relative else lr_scheduler  # kohya-compat


_DIFFUSERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "piecewise_constant")
_TRANSFORMERS = ("inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


def _check_scheduler_name(name: str) -> None:
    if not name.startswith("adafactor") and name not in _DIFFUSERS + _TRANSFORMERS:
        raise UserError(f"--lr_scheduler {name}: unknown; choose from {', '.join(_DIFFUSERS + _TRANSFORMERS)}")


def check_scheduler(optimizer_opts) -> None:
    """Pre-flight: ``--lr_scheduler`` is a known name (``--lr_scheduler_type`` classes are resolved when built)."""
    o = optimizer_opts
    if not o.lr_scheduler_type:
        _check_scheduler_name(resolve_lr_scheduler(o.optimizer_type, o.optimizer_args, o.lr_scheduler,
                                                   o.learning_rate))


def build_scheduler(optimizer, name: str, *, num_training_steps: int, num_warmup_steps: int | float = 0,
                    num_decay_steps: int | float = 0, num_cycles: int = 1, power: float = 1.0,
                    timescale: int | None = None, min_lr_ratio: float | None = None, scheduler_type: str = "",
                    scheduler_args: list[str] | None = None, num_processes: int = 1):
    """Build the LR scheduler by kohya name (diffusers, or transformers where diffusers lacks it).

    Args:
        optimizer: The optimizer.
        name: ``--lr_scheduler`` (or ``adafactor:<lr>`` from :func:`resolve_lr_scheduler`).
        num_training_steps: ``max_train_steps`` (optimizer steps of one process).
        num_warmup_steps / num_decay_steps: ``--lr_warmup_steps`` / ``--lr_decay_steps``: a step count
            or a fraction of ``num_training_steps × num_processes`` (``int(ratio × total)``).
        num_cycles, power, timescale, min_lr_ratio: the ``--lr_scheduler_*`` options.
        scheduler_type, scheduler_args: ``--lr_scheduler_type`` class path and its ``key=value`` literals.
        num_processes: accelerate steps the scheduler once per process, so the curve spans
            ``num_training_steps × num_processes`` scheduler steps.

    Returns:
        A ``torch.optim.lr_scheduler.LRScheduler``.
    """
    total = num_training_steps * num_processes
    warmup = resolve_step_count(num_warmup_steps, total)
    kwargs = parse_kv_args(scheduler_args, "--lr_scheduler_args")
    if type(optimizer).__module__.startswith("schedulefree"):  # kohya-compat: checked before any scheduler
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # schedule-free: no-op
    if scheduler_type:
        if warmup:
            raise UserError(f"--lr_scheduler_type {scheduler_type} cannot use --lr_warmup_steps; set it to 0")
        cls = resolve_lr_scheduler_type(scheduler_type)
        try:
            return cls(optimizer, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"--lr_scheduler_type {scheduler_type}: {first_line(exc)}; "
                            "check --lr_scheduler_args") from exc
    unused = sorted(set(kwargs) - {"step_rules"})
    if unused:  # kohya would fail with a TypeError; never ignore them silently
        raise UserError(f"--lr_scheduler_args {', '.join(unused)}: --lr_scheduler {name} takes no such argument "
                        "(only step_rules, for piecewise_constant); use --lr_scheduler_type for a custom class")
    if name.startswith("adafactor"):
        from transformers.optimization import AdafactorSchedule

        initial = float(name.partition(":")[2] or 0.0)
        return AdafactorSchedule(optimizer, initial_lr=initial)
    if name == "constant" and warmup:
        raise UserError("--lr_scheduler constant cannot use --lr_warmup_steps; use constant_with_warmup")
    if name in _TRANSFORMERS:
        decay = resolve_step_count(num_decay_steps, total)
        return _transformers_scheduler(optimizer, name, total, warmup, decay, num_cycles, timescale, min_lr_ratio)
    _check_scheduler_name(name)
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, step_rules=kwargs.get("step_rules"), num_warmup_steps=warmup,
                         num_training_steps=total, num_cycles=num_cycles, power=power)


def _transformers_scheduler(optimizer, name, total, warmup, decay, num_cycles, timescale, min_lr_ratio):
    from transformers import optimization as tro

    if name == "inverse_sqrt":
        return tro.get_inverse_sqrt_schedule(optimizer, warmup, timescale=timescale)
    if name == "cosine_with_min_lr":
        return tro.get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup, total, num_cycles=num_cycles / 2, min_lr_rate=min_lr_ratio or 0.0)
    return tro.get_wsd_schedule(optimizer, warmup, decay, num_training_steps=total,
                                min_lr_ratio=min_lr_ratio or 0.0, num_cycles=num_cycles / 2)
