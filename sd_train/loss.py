"""Loss formulas of TRAINING.md §6 as pure tensor functions.

Order used by :func:`training_loss`: element loss → mask → mean over (C, H, W) → loss weight →
min-SNR → v-pred-like scaling → v-pred-like loss → debiased estimation → mean over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SNR_CAP = 1000.0  # kohya-compat: SNR clamp used by the v-pred-like and debiased weights


def huber_c(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, schedule: str, c: float,
            scale: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Per-sample Huber threshold ``c`` (shape (B,), float32).

    Args:
        timesteps: (B,) int timesteps.
        alphas_cumprod: ``ᾱ`` of the training schedule, (T,).
        schedule: ``constant`` | ``exponential`` | ``snr`` (``--huber_schedule``).
        c: ``--huber_c``. scale: ``--huber_scale`` (not used by ``snr``).
    """
    t = timesteps.cpu()
    if schedule == "constant":
        return torch.full(t.shape, c * scale, dtype=torch.float32)
    if schedule == "exponential":
        rate = -math.log(c) / num_train_timesteps
        return torch.exp(-rate * t) * scale
    if schedule == "snr":
        acp = alphas_cumprod.cpu().index_select(0, t)
        sigma = ((1.0 - acp) / acp) ** 0.5
        return (1 - c) / (1 + sigma) ** 2 + c
    raise ValueError(f"unknown huber_schedule {schedule!r}")


def element_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                 c: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise loss, shape of ``pred`` (B, C, H, W).

    Args:
        loss_type: ``l2`` | ``l1`` | ``huber`` | ``smooth_l1`` (``--loss_type``).
        c: per-sample Huber threshold (B,) for the Huber losses.
    """
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        cc = c.to(pred.device, pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
        soft = torch.sqrt((pred - target) ** 2 + cc**2) - cc
        return 2 * cc * soft if loss_type == "huber" else 2 * soft
    raise ValueError(f"unknown loss_type {loss_type!r}")


def apply_mask(loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multiply the element loss (B, C, h, w) by a mask (B, H, W) in [0, 1], area-resized to (h, w).

    No renormalization by the mask area (kohya-compat). ``None`` returns ``loss`` unchanged.
    """
    if mask is None:
        return loss
    m = F.interpolate(mask.to(loss.dtype).unsqueeze(1), size=loss.shape[2:], mode="area")
    return loss * m.to(loss.device)


def conditioning_mask(conditioning_images: torch.Tensor) -> torch.Tensor:
    """Mask (B, H, W) from conditioning images (B, 3, H, W) in [−1, 1]: the R channel in [0, 1]."""
    return conditioning_images[:, 0] / 2 + 0.5


def _snr_at(snr: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return snr.cpu().index_select(0, timesteps.cpu())


def min_snr_weight(snr_t: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """``min(SNR, γ)/SNR`` (ε) or ``min(SNR, γ)/(SNR + 1)`` (v); (B,)."""
    clipped = torch.minimum(snr_t, torch.full_like(snr_t, gamma))
    return clipped / (snr_t + 1) if v_prediction else clipped / snr_t


def v_pred_like_scale(snr_t: torch.Tensor) -> torch.Tensor:
    """``SNR'/(SNR' + 1)`` with ``SNR' = min(SNR, 1000)``; (B,)."""
    capped = torch.minimum(snr_t, torch.full_like(snr_t, SNR_CAP))
    return capped / (capped + 1)


def debiased_weight(snr_t: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """``1/sqrt(SNR')`` (ε) or ``1/(SNR' + 1)`` (v), ``SNR' = min(SNR, 1000)``; (B,)."""
    capped = torch.minimum(snr_t, torch.full_like(snr_t, SNR_CAP))
    return 1 / (capped + 1) if v_prediction else 1 / torch.sqrt(capped)


@dataclass(frozen=True)
class LossOptions:
    """Loss options (kohya flag values; defaults = kohya defaults)."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False
    v_parameterization: bool = False

    @classmethod
    def from_training(cls, t, v_parameterization: bool) -> "LossOptions":
        """From :class:`sd_train.options.TrainingOptions` and ``--v_parameterization``."""
        return cls(loss_type=t.loss_type, huber_schedule=t.huber_schedule, huber_c=t.huber_c,
                   huber_scale=t.huber_scale, min_snr_gamma=t.min_snr_gamma,
                   scale_v_pred_loss_like_noise_pred=t.scale_v_pred_loss_like_noise_pred,
                   v_pred_like_loss=t.v_pred_like_loss,
                   debiased_estimation_loss=t.debiased_estimation_loss,
                   v_parameterization=v_parameterization)


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                    alphas_cumprod: torch.Tensor, snr: torch.Tensor, opts: LossOptions,
                    mask: torch.Tensor | None = None,
                    loss_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss (B,) in float32 before the batch mean (TRAINING.md §6 steps 1–4).

    Args:
        pred, target: (B, C, H, W); cast to float32 here.
        timesteps: (B,) int. alphas_cumprod, snr: (T,) from the noise schedule.
        mask: optional (B, H, W) mask. loss_weights: optional (B,) per-sample weights.
    """
    c = None
    if opts.loss_type in ("huber", "smooth_l1"):
        c = huber_c(timesteps, alphas_cumprod, opts.huber_schedule, opts.huber_c,
                    opts.huber_scale)
    loss = element_loss(pred.float(), target.float(), opts.loss_type, c)
    loss = apply_mask(loss, mask).mean(dim=list(range(1, loss.dim())))
    if loss_weights is not None:
        loss = loss * loss_weights.to(loss.device, loss.dtype)
    snr_t = _snr_at(snr, timesteps).to(loss.device, torch.float32)
    if opts.min_snr_gamma:
        loss = loss * min_snr_weight(snr_t, opts.min_snr_gamma, opts.v_parameterization)
    if opts.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_pred_like_scale(snr_t)
    if opts.v_pred_like_loss:
        loss = loss + loss / v_pred_like_scale(snr_t) * opts.v_pred_like_loss
    if opts.debiased_estimation_loss:
        loss = loss * debiased_weight(snr_t, opts.v_parameterization)
    return loss


@dataclass
class LossRecorder:
    """kohya's moving average: one slot per micro-batch index within the epoch (CLI.md §10).

    Losses arrive as device tensors and are read on the host only by :meth:`flush`, so the loop
    does not synchronize every step.

    Attributes:
        slots: last loss of each micro-batch index (epoch 1 appends, later epochs replace).
    """

    slots: list[float] = field(default_factory=list)
    pending: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)

    def add(self, index: int, loss: torch.Tensor, step: int) -> None:
        """Queue the detached loss of micro-batch ``index``, to be logged at ``step``."""
        self.pending.append((index, step, loss))

    def flush(self) -> list[tuple[int, float, float]]:
        """Read queued losses (one host sync); returns ``[(step, loss/current, loss/average), ...]``."""
        if not self.pending:
            return []
        values = torch.stack([loss for _, _, loss in self.pending]).float().cpu().tolist()
        out = []
        for (index, step, _), value in zip(self.pending, values):
            if index < len(self.slots):
                self.slots[index] = value
            else:
                self.slots.append(value)
            out.append((step, value, self.average))
        self.pending = []
        return out

    @property
    def average(self) -> float:
        """Mean over all slots (``loss/average``)."""
        return sum(self.slots) / len(self.slots) if self.slots else 0.0
