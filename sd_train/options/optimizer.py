"""Optimizer, learning-rate and schedule options (CLI.md §5.5, §5.6)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, int_or_ratio, opt


@dataclass(frozen=True)
class OptimizerOptions:
    """Optimizer by kohya name, learning rates and LR schedule."""

    optimizer_type: str = opt("", "Optimizer by kohya name (case-insensitive) or dotted class path", common=True)
    optimizer_args: list[str] | None = opt(
        None, "key=value optimizer arguments; values are Python literals", nargs="*")
    learning_rate: float = opt(2e-6, "Default learning rate of groups without their own", type=float, common=True)
    unet_lr: float | None = opt(None, "UNet learning rate (0 removes the UNet group)", type=float, common=True)
    text_encoder_lr: list[float] | None = opt(
        None, "Text-encoder learning rate(s): one for all, or TE1 TE2", type=float, nargs="*", common=True)
    max_grad_norm: float = opt(1.0, "Clip gradients to this global norm; 0 disables", type=float)
    use_8bit_adam: bool = flag("Old alias for --optimizer_type AdamW8bit")  # kohya-compat
    use_lion_optimizer: bool = flag("Old alias for --optimizer_type Lion")  # kohya-compat
    fused_backward_pass: bool = flag("kohya: full fine-tuning only; ignored with a warning")
    lr_scheduler: str = opt("constant", "LR scheduler by kohya name", common=True)
    lr_warmup_steps: int | float = opt(
        0, "Warm-up steps, a fraction of the total (< 1) or 'N%'", type=int_or_ratio, common=True)
    lr_decay_steps: int | float = opt(
        0, "Decay steps of warmup_stable_decay, a fraction (< 1) or 'N%'", type=int_or_ratio)
    lr_scheduler_num_cycles: int = opt(1, "Restarts of cosine_with_restarts", type=int)
    lr_scheduler_power: float = opt(1, "Exponent of the polynomial scheduler", type=float)
    lr_scheduler_timescale: int | None = opt(None, "Timescale of inverse_sqrt (default: warm-up steps)", type=int)
    lr_scheduler_min_lr_ratio: float | None = opt(
        None, "LR floor as a fraction of the initial LR (cosine_with_min_lr, warmup_stable_decay)", type=float)
    lr_scheduler_type: str = opt("", "Custom scheduler class by dotted path")
    lr_scheduler_args: list[str] | None = opt(
        None, "key=value arguments of the custom scheduler; values are Python literals", nargs="*")
