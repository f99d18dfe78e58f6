"""Noise schedule, noise options and timestep sampling (TRAINING.md §4–5).

Pure functions: every random draw comes from an explicit ``torch.Generator`` (and, for the
pyramid-noise ratios, an explicit ``random.Random``), so the trainer can save and restore the
exact random state for bit-exact resume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000  # kohya-compat: DDPM schedule length used by every SD model


@dataclass(frozen=True)
class NoiseSchedule:
    """DDPM ``scaled_linear`` schedule (beta 0.00085 → 0.012, 1000 steps).

    Attributes:
        alphas_cumprod: ``ᾱ_t``, shape (1000,), float32; after the zero-terminal-SNR fix if asked.
        snr: ``ᾱ_t / (1 − ᾱ_t)`` of the *original* schedule, shape (1000,) (kohya-compat).
        num_train_timesteps: 1000.
    """

    alphas_cumprod: torch.Tensor
    snr: torch.Tensor
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS


def scaled_linear_betas(num_steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> torch.Tensor:
    """``β_t = linspace(sqrt(β_start), sqrt(β_end), T)²`` in float32, as diffusers computes it."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2


def zero_terminal_snr_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Rescale ``ᾱ`` so that ``ᾱ_T = 0`` (Lin et al. 2023), returned as ``cumprod(1 − β')``.

    Args:
        alphas_cumprod: original ``ᾱ``, shape (T,).

    Returns:
        The rescaled ``ᾱ``, shape (T,), computed through ``α_t = ᾱ_t / ᾱ_{t−1}`` and a cumulative
        product exactly as kohya does, so rounding matches.
    """
    s = alphas_cumprod.sqrt()
    s0, s_last = s[0].clone(), s[-1].clone()
    s = (s - s_last) * s0 / (s0 - s_last)
    bar = s**2
    alphas = torch.cat([bar[0:1], bar[1:] / bar[:-1]])
    return torch.cumprod(alphas, dim=0)


def make_schedule(zero_terminal_snr: bool = False) -> NoiseSchedule:
    """Build the training noise schedule.

    Args:
        zero_terminal_snr: apply the zero-terminal-SNR fix to ``alphas_cumprod`` (not to ``snr``).
    """
    acp = torch.cumprod(1.0 - scaled_linear_betas(), dim=0)
    snr = (acp.sqrt() / (1.0 - acp).sqrt()) ** 2  # kohya-compat: SNR of the schedule before the ZT fix
    if zero_terminal_snr:
        acp = zero_terminal_snr_alphas_cumprod(acp)
    return NoiseSchedule(alphas_cumprod=acp, snr=snr)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to (B, 1, 1, …) to broadcast against ``like``."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε``; shapes (B, C, H, W), ``timesteps`` (B,) int."""
    acp = schedule.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps.to(x0.device)]
    return _per_sample(acp**0.5, x0) * x0 + _per_sample((1 - acp) ** 0.5, x0) * noise


def v_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
             timesteps: torch.Tensor) -> torch.Tensor:
    """v-prediction target ``sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0``; shapes as :func:`add_noise`."""
    acp = schedule.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps.to(x0.device)]
    return _per_sample(acp**0.5, x0) * noise - _per_sample((1 - acp) ** 0.5, x0) * x0


def noise_offset(noise: torch.Tensor, latents: torch.Tensor, offset: float,
                 generator: torch.Generator, random_strength: bool = False,
                 adaptive_scale: float | None = None) -> torch.Tensor:
    """Add a per-(sample, channel) constant offset to ``noise`` (TRAINING.md §5.2).

    Args:
        noise: ε, (B, C, H, W). latents: x0, same shape.
        offset: ``--noise_offset``; 0 returns ``noise`` unchanged.
        random_strength: scale the offset by one ``U(0, 1)`` draw per batch.
        adaptive_scale: ``--adaptive_noise_scale``; adds ``a·|mean_{h,w}(x0)|`` then clamps at 0.
    """
    if not offset:
        return noise
    strength: float | torch.Tensor = offset
    if random_strength:
        strength = torch.rand(1, generator=generator).to(noise.device) * offset
    if adaptive_scale is not None:
        strength = strength + adaptive_scale * latents.mean(dim=(2, 3), keepdim=True).abs()
        strength = torch.clamp(strength, min=0.0)
    b, c = latents.shape[:2]
    draw = torch.randn((b, c, 1, 1), generator=generator).to(noise.device, noise.dtype)
    return noise + strength * draw


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: torch.Generator, rng: random.Random) -> torch.Tensor:
    """Multires noise: add upsampled coarse noise levels, then divide by the global std.

    Args:
        noise: ε, (B, C, H, W).
        iterations: ``--multires_noise_iterations`` (0 = unchanged).
        discount: ``--multires_noise_discount``; level ``i`` has weight ``discount**i``.
        generator: torch RNG for the Gaussian draws. rng: Python RNG for the size ratios.
    """
    if not iterations:
        return noise
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):  # kohya-compat: level 0 adds a second full-resolution noise
        r = rng.random() * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        coarse = torch.randn((b, c, hn, wn), generator=generator).to(noise.device, noise.dtype)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def sample_timesteps(batch_size: int, generator: torch.Generator, min_timestep: int | None = None,
                     max_timestep: int | None = None) -> torch.Tensor:
    """Draw ``t ~ randint[min, max)`` per sample (int64, shape (B,)); ``min == max`` is constant."""
    lo = 0 if min_timestep is None else min_timestep
    hi = NUM_TRAIN_TIMESTEPS if max_timestep is None else max_timestep
    if lo == hi:
        return torch.full((batch_size,), lo, dtype=torch.long)
    return torch.randint(lo, hi, (batch_size,), generator=generator)


@dataclass(frozen=True)
class NoiseOptions:
    """The noise/timestep options of TRAINING.md §5 (kohya flag values, defaults = off)."""

    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    min_timestep: int | None = None
    max_timestep: int | None = None
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False

    @classmethod
    def from_training(cls, t) -> "NoiseOptions":
        """From :class:`sd_train.options.TrainingOptions` (kohya flag names)."""
        return cls(noise_offset=t.noise_offset or 0.0,
                   noise_offset_random_strength=t.noise_offset_random_strength,
                   adaptive_noise_scale=t.adaptive_noise_scale,
                   multires_noise_iterations=t.multires_noise_iterations or 0,
                   multires_noise_discount=t.multires_noise_discount, min_timestep=t.min_timestep,
                   max_timestep=t.max_timestep, ip_noise_gamma=t.ip_noise_gamma,
                   ip_noise_gamma_random_strength=t.ip_noise_gamma_random_strength)


def noisy_latents(schedule: NoiseSchedule, latents: torch.Tensor, opts: NoiseOptions,
                  generator: torch.Generator, rng: random.Random,
                  timesteps: torch.Tensor | None = None):
    """Steps 1–5 of TRAINING.md §5 in kohya's draw order.

    Args:
        latents: scaled x0, (B, C, H, W).
        timesteps: fixed timesteps (validation); drawn when ``None``.

    Returns:
        ``(noise, x_t, timesteps)``: the target noise ε (B, C, H, W), the noisy input, and (B,) int64.
    """
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    noise = noise_offset(noise, latents, opts.noise_offset, generator,
                         opts.noise_offset_random_strength, opts.adaptive_noise_scale)
    noise = pyramid_noise(noise, opts.multires_noise_iterations, opts.multires_noise_discount,
                          generator, rng)
    if timesteps is None:
        timesteps = sample_timesteps(latents.shape[0], generator, opts.min_timestep,
                                     opts.max_timestep)
    timesteps = timesteps.to(latents.device)
    noisy_input = noise
    if opts.ip_noise_gamma:
        gamma: float | torch.Tensor = opts.ip_noise_gamma
        if opts.ip_noise_gamma_random_strength:
            gamma = torch.rand(1, generator=generator).to(latents.device) * opts.ip_noise_gamma
        extra = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        noisy_input = noise + gamma * extra
    return noise, add_noise(schedule, latents, noisy_input, timesteps), timesteps


def rng_snapshot() -> dict:
    """Global Python/NumPy/torch (CPU, CUDA) RNG states, safe for ``torch.load(weights_only=True)``."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    snap = {"python": [version, list(state), gauss], "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def rng_restore(snap: dict) -> None:
    """Restore the global RNG states taken by :func:`rng_snapshot`."""
    version, state, gauss = snap["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = snap["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
