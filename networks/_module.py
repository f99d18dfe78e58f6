"""``LoRAModule``: one LoRA/LoCon adapter patched onto a ``Linear`` or ``Conv2d`` by a forward swap.

Part of ``networks.lora`` (re-exported there); kept apart so the network file stays small.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from library.lora.algebra import lora_scale


def _bound_owner(fn: Any) -> Any:
    return getattr(fn, "__self__", None)


class LoRAModule(nn.Module):
    """A LoRA/LoCon adapter for one ``Linear`` or ``Conv2d``: ``y = W(x) + up(down(x)) · multiplier · scale``.

    Args:
        lora_name: kohya module name (no dots); also its key in the network's state dict.
        org_module: the frozen layer; kept in a list so it is not a submodule.
        multiplier: output multiplier.
        lora_dim: rank ``r``.
        alpha: ``scale = alpha / r``; ``None`` or 0 means ``alpha = r``.
        dropout: dropout probability on the rank activations (training only).
        rank_dropout: probability of dropping each rank channel per sample (training only).
        module_dropout: probability of skipping the adapter for one call (training only).

    Shapes: ``lora_down`` Linear ``(r, in)`` or Conv ``(r, in, kh, kw)``; ``lora_up`` ``(out, r[, 1, 1])``.
    """

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float = 1.0, lora_dim: int = 4,
                 alpha: float | torch.Tensor | None = 1.0, dropout: float | None = None,
                 rank_dropout: float | None = None, module_dropout: float | None = None):
        super().__init__()
        self.lora_name = lora_name
        self.lora_dim = int(lora_dim)
        dev = org_module.weight.device
        if org_module.__class__.__name__ == "Conv2d":
            self.lora_down = nn.Conv2d(org_module.in_channels, self.lora_dim, org_module.kernel_size,
                                       org_module.stride, org_module.padding, bias=False, device=dev)
            self.lora_up = nn.Conv2d(self.lora_dim, org_module.out_channels, 1, 1, bias=False, device=dev)
        else:
            self.lora_down = nn.Linear(org_module.in_features, self.lora_dim, bias=False, device=dev)
            self.lora_up = nn.Linear(self.lora_dim, org_module.out_features, bias=False, device=dev)
        a = float(alpha) if alpha is not None else 0.0
        a = a if a else float(self.lora_dim)
        self.register_buffer("alpha", torch.tensor(a, dtype=torch.float32, device=dev))
        self.scale = lora_scale(a, self.lora_dim)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.org_module = [org_module]
        self.org_forward = None
        self._org_forward_was_attr = False

    def apply_to(self) -> None:
        """Replace ``org_module.forward`` with this adapter's forward (on top of any earlier wrapper)."""
        org = self.org_module[0]
        self._org_forward_was_attr = "forward" in org.__dict__
        self.org_forward = org.forward
        org.forward = self.forward

    def restore(self) -> None:
        """Remove this adapter from the forward chain of its layer, wherever it sits in a stack.

        Raises:
            RuntimeError: the chain was rewired by code that does not keep ``org_forward``.
        """
        if self.org_forward is None:
            return
        org = self.org_module[0]
        current = org.__dict__.get("forward")
        if current is not None and current == self.forward:
            if self._org_forward_was_attr:
                org.forward = self.org_forward
            else:
                del org.forward
        else:
            wrapper = self._wrapper_above(current)
            wrapper.org_forward = self.org_forward
            if isinstance(wrapper, LoRAModule):
                wrapper._org_forward_was_attr = self._org_forward_was_attr
        self.org_forward = None

    def _wrapper_above(self, fn: Any) -> Any:
        """Find the wrapper whose ``org_forward`` is this module's forward, walking down from ``fn``."""
        for _ in range(10_000):
            owner = _bound_owner(fn)
            nxt = getattr(owner, "org_forward", None) if owner is not None else None
            if nxt is None:
                break
            if nxt == self.forward:
                return owner
            fn = nxt
        raise RuntimeError(f"{self.lora_name}: cannot restore; its forward is no longer in the layer's chain")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``W(x) + up(down(x)) · multiplier · scale`` with the configured dropouts in training mode."""
        out = self.org_forward(x, *args, **kwargs)
        if self.multiplier == 0:
            return out
        if self.training and self.module_dropout and torch.rand(1) < self.module_dropout:
            return out
        lx = self.lora_down(x)
        if self.training and self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)
            elif lx.dim() == 4:
                mask = mask[:, :, None, None]
            lx = lx * mask.to(lx.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return torch.add(out, self.lora_up(lx), alpha=self.multiplier * scale)

    def refresh_scale(self) -> None:
        """Recompute ``scale`` from the ``alpha`` buffer (after loading weights)."""
        self.scale = lora_scale(float(self.alpha), self.lora_dim)  # sd-train: kohya keeps the stale scale
