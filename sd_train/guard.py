"""NaN guard (TRAINING.md §12): finiteness checks, skip accounting and batch reports.

A non-finite loss or gradient norm skips the optimizer step of that accumulation window;
``global_step`` still advances. Under fp16 mixed precision a non-finite gradient norm with a finite loss
is the GradScaler's overflow: the scaler skips that step and lowers its scale, and it is not counted
here. After ``max_consecutive`` skips in a row, or when the network parameters themselves are
non-finite, training stops with :class:`NonFiniteTrainingError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch

from library.errors import UserError

DEFAULT_MAX_CONSECUTIVE = 10  # sd-train: consecutive skipped steps before training stops


class NonFiniteTrainingError(UserError):
    """Training stopped because losses, gradients or parameters stayed non-finite (exit 3)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=3)


def is_finite(value: torch.Tensor | float) -> bool:
    """True when every element of ``value`` is finite (one host sync for a device tensor)."""
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value))
    return bool(torch.isfinite(value).all())


def finite_flags(loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[bool, bool]:
    """``(loss finite, gradient norm finite)`` for one optimizer step, read with one host sync.

    Kept apart because fp16's GradScaler owns a non-finite gradient norm with a finite loss (its overflow).
    """
    flags = torch.stack([torch.isfinite(loss).all(), torch.isfinite(grad_norm.to(loss.device)).all()])
    loss_ok, norm_ok = flags.tolist()
    return bool(loss_ok), bool(norm_ok)


def params_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every tensor in ``params`` is finite (one host sync for all of them)."""
    flags = [torch.isfinite(p.detach()).all() for p in params]
    return bool(torch.stack(flags).all()) if flags else True


def batch_report(batch: dict, timesteps: torch.Tensor | None) -> str:
    """One-paragraph description of a batch: image paths, captions, timesteps and bucket size."""
    paths = batch.get("absolute_paths") or batch.get("image_paths") or []
    captions = batch.get("captions") or []
    latents = batch.get("latents")
    bucket = None if latents is None else tuple(int(s) * 8 for s in latents.shape[-2:])
    steps = None if timesteps is None else timesteps.tolist()
    return f"images={list(paths)} captions={list(captions)} timesteps={steps} bucket_hw={bucket}"


@dataclass
class NanGuard:
    """Skip accounting for non-finite steps.

    Attributes:
        max_consecutive: consecutive skipped steps that stop training.
        skipped_total: steps skipped so far (logged as ``sd_train/nonfinite_steps_skipped``).
        consecutive: current run of skipped steps.
        reports: the batch reports of skipped steps (most recent last, at most 20 kept).
    """

    max_consecutive: int = DEFAULT_MAX_CONSECUTIVE
    skipped_total: int = 0
    consecutive: int = 0
    reports: list[str] = field(default_factory=list)

    def record_skip(self, step: int, reason: str, report: str) -> None:
        """Account for a skipped optimizer step; raise after ``max_consecutive`` in a row."""
        self.skipped_total += 1
        self.consecutive += 1
        self.reports = (self.reports + [f"step {step}: {reason}: {report}"])[-20:]
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive optimizer steps had a non-finite {reason}; "
                f"stopping without saving (last batch: {report}); try --no_half_vae, a lower "
                "--learning_rate or --mixed_precision bf16")

    def record_ok(self) -> None:
        """Account for a good optimizer step (resets the consecutive counter)."""
        self.consecutive = 0

    def check_params(self, params: Iterable[torch.Tensor], step: int) -> None:
        """Raise :class:`NonFiniteTrainingError` if a network parameter is non-finite."""
        if not params_finite(params):
            raise NonFiniteTrainingError(
                f"network parameters became non-finite at step {step}; nothing was saved from "
                "this state (the last checkpoint on disk is still valid)")

    def state_dict(self) -> dict:
        """Counters for the resume record."""
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.skipped_total = int(state.get("skipped_total", 0))
        self.consecutive = int(state.get("consecutive", 0))

    def summary(self) -> dict:
        """Final-summary values."""
        return {k: v for k, v in asdict(self).items() if k != "reports"}
