"""Pure tensor math for LoRA factors, shared by ``networks.lora`` and the tools.

Shapes: Linear ``down (r, in)``, ``up (out, r)``; conv ``down (r, in, kh, kw)``, ``up (out, r, 1, 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_scale(alpha: float | torch.Tensor | None, rank: int) -> float:
    """``alpha / rank``; a missing or zero alpha means ``alpha = rank`` (scale 1)."""
    a = float(alpha) if alpha is not None else 0.0
    return (a if a else rank) / rank


def delta_weight(up: torch.Tensor, down: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``ΔW = up @ down · scale`` in the layout of the target weight.

    Linear -> ``(out, in)``; 1×1 conv -> ``(out, in, 1, 1)``; k×k conv -> ``(out, in, k, k)``.
    """
    if down.dim() == 2:
        return (up @ down) * scale
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * scale
    return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def merge_delta(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float,
                multiplier: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``W + multiplier · ΔW`` computed in float32 on ``device`` (``W`` itself is not modified).

    Args:
        weight: target weight ``(out, in[, kh, kw])`` of any float dtype.
        up, down: LoRA factors (see module docstring); ``scale`` = alpha / rank.
    """
    device = weight.device if device is None else device
    w = weight.detach().to(device=device, dtype=torch.float32)
    delta = delta_weight(up.to(device=device, dtype=torch.float32), down.to(device=device, dtype=torch.float32), scale)
    return w + multiplier * delta.reshape(w.shape)


def max_norm_ratio(up: torch.Tensor, down: torch.Tensor, scale: float, max_norm: float) -> tuple[float, float]:
    """kohya's ``--scale_weight_norms`` rule for one module.

    ``n = max(‖ΔW·scale‖_F, max_norm/2)``, ``ratio = min(n, max_norm) / n``.

    Returns:
        ``(ratio, norm_after)``: multiply ``up`` and ``down`` each by ``sqrt(ratio)`` when ``ratio != 1``.
    """
    full = delta_weight(up.float(), down.float(), scale).norm()
    n = full.clamp(min=max_norm / 2)
    ratio = float(n.clamp(max=max_norm) / n)
    return ratio, float(full) * ratio
