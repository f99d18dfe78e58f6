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
