"""Train the tiny VAE of the toy world from scratch (64×64 RGB <-> 8×8×4 latents).

It learns on shapes of every palette colour, the held-out one included (a real VAE can draw anything; only
the diffusion models are kept from the held-out concept), with a little colour jitter. Afterwards the
latents are normalised exactly (1×1 ``quant_conv`` / ``post_quant_conv`` rescaled) and the posterior
variance is fixed tiny, so ``latent_dist.sample()`` (what the trainer caches) equals the mean.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch
import torch.nn.functional as F

from library.toyworld import world

# Raw latent std after normalisation: the geometric mean of 1/0.13025 (SDXL) and 1/0.18215 (SD1), so that
# both families' scaled latents have a std near 1 (0.85 and 1.18).
LATENT_STD = 1.0 / math.sqrt(0.13025 * 0.18215)
AUX_WEIGHT = 1.0  # weight of colour_guide in the VAE loss
LOGVAR = -14.0  # posterior log-variance: std e^-7 ≈ 0.0009 against a latent std of 6.5


def _batch(rng: random.Random, n: int) -> torch.Tensor:
    return world.to_tensor([world.draw(world.palette_scene(rng)) for _ in range(n)])


def colour_guide(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pull latent channels 0-2 towards the 8×8 block means of R, G, B (a supervised shortcut that makes the
    encoder learn fast and the latents colour-like, as SD's are); channel 3 is free for edges."""
    return F.mse_loss(z[:, :3], F.avg_pool2d(x, 8))


def lr_at(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(config: dict, steps: int, seed: int, batch_size: int = 8, lr: float = 1e-3,
              log: Callable[[str], None] = print):
    """Build ``AutoencoderKL(**config)`` with seeded weights and train it to reconstruct the world.

    Returns:
        The trained VAE in eval mode, latents normalised (:func:`normalise_latents`).
    """
    from library.models.vae import build_vae

    torch.manual_seed(seed)
    vae = build_vae(config)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        x = _batch(rng, batch_size)
        z = vae.encode(x).latent_dist.mode()
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + (rec - x).abs().mean() + AUX_WEIGHT * colour_guide(z, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()
    normalise_latents(vae, _batch(random.Random(seed + 1), 64))
    return vae


@torch.no_grad()
def normalise_latents(vae, images: torch.Tensor) -> None:
    """Give the latent mean channels zero mean and std :data:`LATENT_STD` on ``images`` and fix the
    posterior log-variance at :data:`LOGVAR`; decoding is unchanged (``post_quant_conv`` takes the inverse)."""
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[4:].zero_()
    quant.bias[4:].fill_(LOGVAR)
    z = vae.encode(images).latent_dist.mode()
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    scale = LATENT_STD / std
    quant.weight[:4] *= scale.view(4, 1, 1, 1)
    quant.bias[:4] = (quant.bias[:4] - mean) * scale
    post.bias += post.weight[:, :, 0, 0] @ mean
    post.weight /= scale.view(1, 4, 1, 1)


@torch.no_grad()
def reconstruction_error(vae, seed: int, n: int = 32) -> float:
    """Mean absolute error (in 0–255 levels) of encode+decode on ``n`` palette/random pictures."""
    x = _batch(random.Random(seed), n)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    return float((rec - x).abs().mean() * 127.5)
