"""The process group of a run and gradient averaging across processes (CLI.md §7)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import PartialState


def gloo_on_cpu() -> bool:
    """sd-train: a multi-process launch (``LOCAL_RANK`` set) without CUDA trains on the CPU over gloo."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()


def process_state(ddp_timeout: int | None = None) -> PartialState:
    """This run's process state; the first call creates the process group, with ``--ddp_timeout``
    minutes as its collective timeout when given (kohya passes it through accelerate the same way)."""
    kwargs = {"timeout": timedelta(minutes=ddp_timeout)} if ddp_timeout else {}
    return PartialState(cpu=gloo_on_cpu(), **kwargs)


def average_gradients(params: list[torch.Tensor], accelerator) -> None:
    """All-reduce (mean) the gradients of ``params`` across processes in one flat collective.

    sd-train: the network's modules run inside the frozen U-Net / text encoders, so the DDP wrapper's
    ``forward`` is never called and its autograd hooks never fire; without this each process would
    step on its own gradients and the copies would drift apart. Called once per optimizer step (after
    accumulation), before clipping. A missing gradient counts as zeros. No-op for one process.

    Args:
        params: the trainable parameters (same order on every process).
        accelerator: the run's ``accelerate.Accelerator``.
    """
    params = [p for p in params if p.requires_grad]  # frozen ones (--stop_text_encoder_training) have none
    if accelerator.num_processes <= 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
