"""Train a tiny UNet and its text encoder(s) from scratch on the toy world's latents (epsilon objective).

The conditioning is the trainer's (:mod:`library.toyworld.conditioning`), so a LoRA trained later by
sd-train meets the same inputs the base learned from. Captions are dropped 10% of the time (classifier-free guidance).
"""

from __future__ import annotations

import copy
import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from library.toyworld.vae_fit import lr_at

CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0


def alphas_cumprod() -> torch.Tensor:
    """``ᾱ_t`` of the SD ``scaled_linear`` schedule (β 0.00085 → 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class Ema:
    """Exponential moving average of the trained weights (used as the final weights)."""

    def __init__(self, modules: Sequence[torch.nn.Module], decay: float):
        self.modules, self.decay = list(modules), decay
        self.shadow = [copy.deepcopy(m).requires_grad_(False) for m in self.modules]

    @torch.no_grad()
    def update(self) -> None:
        """``shadow = decay·shadow + (1 − decay)·weights``."""
        for avg, live in zip(self.shadow, self.modules):
            for a, p in zip(avg.parameters(), live.parameters()):
                a.lerp_(p, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_modules(self) -> None:
        """Load the averaged weights into the live modules."""
        for avg, live in zip(self.shadow, self.modules):
            live.load_state_dict(avg.state_dict())


def train_base(spec, unet, text_encoders: Sequence, data: Sequence[tuple[str, torch.Tensor]], steps: int,
               seed: int, batch_size: int = 32, lr: float = 1e-3, ema_decay: float = 0.998,
               log: Callable[[str], None] = print) -> None:
    """Train ``unet`` and ``text_encoders`` in place on ``(caption, unscaled latent (4, 8, 8))`` pairs.

    ``spec`` is the family's :class:`library.models.families.FamilySpec` (conditioning, latent scale).

    Each step draws ``batch_size`` pairs, replaces 10% of the captions with ``""``, adds noise at a uniform
    timestep and regresses the noise with min-SNR-5 weights. Unique captions are encoded once per step.
    The returned modules hold the EMA weights.
    """
    from library.toyworld.conditioning import Conditioner

    cond = Conditioner(spec)
    modules = [unet, *text_encoders]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema, acp = Ema(modules, ema_decay), alphas_cumprod()
    snr = acp / (1 - acp)
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    latents = torch.stack([z for _, z in data]) * spec.vae_scale
    for m in modules:
        m.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=100)
        index = torch.randint(0, len(data), (batch_size,), generator=gen)
        captions = ["" if rng.random() < CAPTION_DROPOUT else data[i][0] for i in index.tolist()]
        unique = sorted(set(captions))
        context, pooled = cond.encode(text_encoders, unique)
        rows = torch.tensor([unique.index(c) for c in captions])
        x0, eps = latents[index], torch.randn(batch_size, *latents.shape[1:], generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = cond.predict(unet, x_t, t, context[rows], None if pooled is None else pooled[rows])
        weight = torch.clamp(snr[t], max=MIN_SNR_GAMMA) / snr[t]
        loss = (F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        if step % 200 == 0 or step == steps - 1:
            log(f"{spec.name} step {step}/{steps} loss {loss.item():.4f}")
    ema.copy_to_modules()
    for m in modules:
        m.eval()
