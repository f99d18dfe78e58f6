"""Noise schedule and noise options against hand-computed values (TRAINING.md §4–5)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from sd_train import noise as N


def test_schedule_matches_scaled_linear_formula_and_diffusers():
    sched = N.make_schedule()
    b0, b_last = 0.00085, 0.012
    assert sched.alphas_cumprod[0].item() == pytest.approx(1 - b0, rel=1e-6)
    betas = [(math.sqrt(b0) + i * (math.sqrt(b_last) - math.sqrt(b0)) / 999) ** 2 for i in range(1000)]
    expected = math.prod(1 - b for b in betas)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-4)
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=b0, beta_end=b_last, beta_schedule="scaled_linear",
                        num_train_timesteps=1000)
    assert torch.equal(sched.alphas_cumprod, ref.alphas_cumprod)


def test_snr_is_taken_before_zero_terminal_fix():
    plain, zt = N.make_schedule(), N.make_schedule(zero_terminal_snr=True)
    assert torch.equal(plain.snr, zt.snr)
    a = plain.alphas_cumprod[500].item()
    assert plain.snr[500].item() == pytest.approx(a / (1 - a), rel=1e-5)
    assert zt.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert zt.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-5)
    s0, sT = math.sqrt(plain.alphas_cumprod[0]), math.sqrt(plain.alphas_cumprod[-1])
    s = math.sqrt(plain.alphas_cumprod[300])
    expected = ((s - sT) * s0 / (s0 - sT)) ** 2
    assert zt.alphas_cumprod[300].item() == pytest.approx(expected, rel=1e-4)


def test_add_noise_and_v_target_by_hand():
    sched = N.make_schedule()
    x0, eps = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    t = torch.tensor([10])
    a = sched.alphas_cumprod[10].item()
    xt = N.add_noise(sched, x0, eps, t).item()
    assert xt == pytest.approx(math.sqrt(a) * 2 - math.sqrt(1 - a), rel=1e-5)
    v = N.v_target(sched, x0, eps, t).item()
    assert v == pytest.approx(-math.sqrt(a) - math.sqrt(1 - a) * 2, rel=1e-5)


def test_noise_offset_adds_per_channel_constant():
    g = torch.Generator().manual_seed(3)
    eps, lat = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    out = N.noise_offset(eps, lat, 0.5, g)
    draw = torch.randn((2, 3, 1, 1), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, (0.5 * draw).expand(2, 3, 4, 4))
    assert N.noise_offset(eps, lat, 0.0, g) is eps


def test_noise_offset_adaptive_and_random_strength():
    eps, lat = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -2.0)
    out = N.noise_offset(eps, lat, 0.1, torch.Generator().manual_seed(1), adaptive_scale=0.5)
    draw = torch.randn((1, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, (1.1 * draw).expand(1, 1, 2, 2))
    ref = torch.Generator().manual_seed(2)
    u, d = torch.rand(1, generator=ref), torch.randn((1, 1, 1, 1), generator=ref)
    out = N.noise_offset(eps, lat, 0.2, torch.Generator().manual_seed(2), random_strength=True)
    assert torch.allclose(out, (u * 0.2 * d).expand(1, 1, 2, 2))


def test_pyramid_noise_unit_std_and_level_count():
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = N.pyramid_noise(eps, 10, 0.3, torch.Generator().manual_seed(0), random.Random(0))
    assert out.std().item() == pytest.approx(1.0, rel=1e-5)
    assert N.pyramid_noise(eps, 0, 0.3, torch.Generator(), random.Random(0)) is eps
    # a 1x1 input stops after level 0: one ratio drawn only
    rng = random.Random(5)
    N.pyramid_noise(torch.randn(1, 2, 1, 1), 6, 0.3, torch.Generator(), rng)
    ref = random.Random(5)
    ref.random()
    assert rng.random() == ref.random()


def test_timesteps_range_and_constant():
    t = N.sample_timesteps(1000, torch.Generator().manual_seed(0), 100, 200)
    assert t.min() >= 100 and t.max() < 200 and t.dtype == torch.long
    assert torch.equal(N.sample_timesteps(3, torch.Generator(), 7, 7), torch.tensor([7, 7, 7]))


def test_ip_noise_gamma_keeps_target_noise():
    sched = N.make_schedule()
    lat = torch.zeros(1, 1, 2, 2)
    opts = N.NoiseOptions(ip_noise_gamma=0.5, min_timestep=0, max_timestep=0)
    eps, xt, t = N.noisy_latents(sched, lat, opts, torch.Generator().manual_seed(0), random.Random(0))
    ref = torch.Generator().manual_seed(0)
    e0 = torch.randn(lat.shape, generator=ref)
    extra = torch.randn(lat.shape, generator=ref)
    assert torch.equal(eps, e0) and torch.equal(t, torch.tensor([0]))
    a = sched.alphas_cumprod[0]
    assert torch.allclose(xt, (1 - a) ** 0.5 * (e0 + 0.5 * extra))
