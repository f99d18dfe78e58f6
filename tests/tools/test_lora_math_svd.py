"""Exact SVD of a low-rank product, rank rules and clamps (TOOLS.md §2–§4)."""

from __future__ import annotations

import pytest
import torch

from library.lora.svd import clamp_quantile, dynamic_rank, padded_singular_values, product_svd, resize_factors, retention_stats, svd_merge_factors, truncate_svd


def _factors(out, n, r, dtype, gen, deficient=0):
    up = torch.randn(out, r, generator=gen, dtype=dtype)
    down = torch.randn(r, n, generator=gen, dtype=dtype)
    if deficient:
        up[:, -deficient:] = up[:, :deficient]  # rank r - deficient
    return up, down


@pytest.mark.parametrize("out,n,r,dtype", [(64, 96, 1, torch.float64), (320, 640, 8, torch.float64),
                                           (10240, 320, 32, torch.float32), (1280, 2560, 64, torch.float32), (40, 30, 64, torch.float64),
                                           (96, 64, 16, torch.float32)])
def test_product_svd_matches_dense(out, n, r, dtype):
    gen = torch.Generator().manual_seed(out + r)
    up, down = _factors(out, n, r, dtype, gen)
    u, s, vh = product_svd(up, down)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    du, ds, dvh = torch.linalg.svd(up @ down, full_matrices=False)
    dense = ds[: s.shape[0]]
    assert torch.allclose(s, dense, rtol=tol, atol=tol * float(dense[0]))
    eye = torch.eye(s.shape[0], dtype=dtype)
    assert torch.allclose(u.T @ u, eye, atol=tol * 10) and torch.allclose(vh @ vh.T, eye, atol=tol * 10)
    rel = (u @ torch.diag(s) @ vh - up @ down).norm() / (up @ down).norm()
    assert rel < tol * 10
    for k in (1, max(1, r // 2)):
        a, b = truncate_svd(u, s, vh, k)
        ref = du[:, :k] @ torch.diag(ds[:k]) @ dvh[:k]
        assert (a @ b - ref).norm() / ref.norm() < tol * 10


def test_sign_convention_largest_entry_positive():
    gen = torch.Generator().manual_seed(3)
    up, down = _factors(50, 70, 6, torch.float64, gen)
    u, _, _ = product_svd(-up, down)
    idx = u.abs().argmax(0)
    assert (u[idx, torch.arange(u.shape[1])] > 0).all()


def test_rank_deficient_and_zero_and_padding():
    gen = torch.Generator().manual_seed(4)
    up, down = _factors(60, 80, 8, torch.float64, gen, deficient=3)
    u, s, vh = product_svd(up, down)
    assert s.shape == (8,) and (s[5:] < 1e-10 * s[0]).all()
    a, b = truncate_svd(u, s, vh, 12)  # k > R: zero padding
    assert a.shape == (60, 12) and b.shape == (12, 80)
    assert (a[:, 8:] == 0).all() and (b[8:] == 0).all()
    assert torch.allclose(a @ b, up @ down, atol=1e-10)
    z_down, z_up, z_alpha, (z_s, k) = resize_factors(torch.zeros(4, 10), torch.zeros(12, 4), 2.0, 4)
    assert k == 1 and z_up.shape == (12, 1) and z_down.shape == (1, 10) and z_alpha == 0.5
    assert z_s.shape == (10,) and not z_up.any()


# Hand-computed: s = [10, 5, 2, 1, 0.5, 0, 0, 0] (padded length 8)
S = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("method,param,expected", [
    ("sv_ratio", 4.0, 3),         # σ > 2.5: {10, 5} -> count 2 -> k = 3
    ("sv_ratio", 1000.0, 6),      # σ > 0.01: 5 values -> k = 6
    ("sv_ratio", 1.0, 2),         # none > 10 -> clamp to 1 -> k = 2
    ("sv_cumulative", 0.8, 3),    # cumsum/18.5 = .54, .81 ... -> searchsorted(.8) = 1, +1 -> 2, k = 3
    ("sv_cumulative", 0.5, 2),    # searchsorted(.5) = 0 -> 1 -> k = 2
    ("sv_cumulative", 1.0, 6),    # first index reaching 1.0 is 4 -> 5 -> k = 6
    ("sv_fro", 0.9, 3),           # σ²/130.25 cumulative .768, .960; target .81 -> index 1 -> 2 -> k = 3
    ("sv_fro", 0.5, 2),           # target .25 -> index 0 -> 1 -> k = 2
    ("sv_fro", 1.0, 6),           # cumulative reaches 1.0 at index 4 -> 5 -> k = 6
])
def test_dynamic_rank_rules(method, param, expected):
    assert dynamic_rank(S, method, param) == expected


def test_dynamic_rank_zero_matrix_and_stats():
    assert dynamic_rank(torch.zeros(5), "sv_ratio", 2.0) == 1
    kept_sum, kept_fro, ratio = retention_stats(S, 2)
    assert kept_sum == pytest.approx(15 / 18.5) and kept_fro == pytest.approx((125 / 130.25) ** 0.5)
    assert ratio == pytest.approx(2.0)
    assert padded_singular_values(torch.tensor([3.0, 1.0]), 4).tolist() == [3.0, 1.0, 0.0, 0.0]


def test_clamp_quantile_signed():
    up = torch.arange(-50, 50, dtype=torch.float32).reshape(10, 10)
    down = torch.zeros(1, 1)
    hi = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.99))  # 48.0 (101 values)
    cu, cd = clamp_quantile(up, down, 0.99)
    assert hi == pytest.approx(48.0)
    assert float(cu.max()) == pytest.approx(hi) and float(cu.min()) == pytest.approx(-hi)  # signed, symmetric
    assert (cu[(up.abs() < hi)] == up[(up.abs() < hi)]).all() and cd.tolist() == [[0.0]]


def test_svd_merge_self_half_half_equals_input():
    gen = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 32, generator=gen), torch.randn(48, 4, generator=gen)
    m_down, m_up = svd_merge_factors([(down, up, 2.0, 0.5), (down, up, 2.0, 0.5)], 4, clamp=None)
    assert torch.allclose(m_up @ m_down, up @ down * 0.5, atol=1e-5)


def test_product_svd_k_forms_only_leading_vectors():
    gen = torch.Generator().manual_seed(6)
    up, down = _factors(700, 300, 24, torch.float64, gen)
    u, s, vh = product_svd(up, down)
    uk, sk, vhk = product_svd(up, down, 5)
    assert uk.shape == (700, 5) and vhk.shape == (5, 300) and torch.equal(sk, s) and s.shape == (24,)
    assert torch.allclose(uk, u[:, :5], atol=1e-12) and torch.allclose(vhk, vh[:5], atol=1e-12)
    assert product_svd(up, down, 99)[0].shape == (700, 24)  # capped at m


@pytest.mark.parametrize("out,n,conv", [(5120, 640, False), (640, 2880, True), (320, 320, False)])
def test_resize_factors_matches_dense_truncation(out, n, conv):
    """Rank 128 -> 32 like the benchmark: same product as kohya's dense SVD, signs fixed on ``up``."""
    gen = torch.Generator().manual_seed(out)
    up, down = torch.randn(out, 128, generator=gen) * 0.05, torch.randn(128, n, generator=gen) / n ** 0.5
    if conv:
        up, down = up.reshape(out, 128, 1, 1), down.reshape(128, n // 9, 3, 3)
    new_down, new_up, new_alpha, (s_full, k) = resize_factors(down, up, 64.0, 32)
    assert k == 32 and new_alpha == 16.0 and s_full.shape == (min(out, n),) and (s_full[128:] == 0).all()
    assert new_down.shape == (32, *down.shape[1:]) and new_up.shape == (out, 32, *up.shape[2:])
    w = up.reshape(out, 128).double() @ down.reshape(128, n).double()
    du, ds, dvh = torch.linalg.svd(w, full_matrices=False)
    ref = (du[:, :32] * ds[:32]) @ dvh[:32]
    got = new_up.reshape(out, 32).double() @ new_down.reshape(32, n).double()
    assert (got - ref).norm() / ref.norm() < 1e-5
    assert torch.allclose(s_full[:128].double(), ds[:128], rtol=1e-5, atol=1e-5 * float(ds[0]))
    u2 = new_up.reshape(out, 32)
    assert (u2[u2.abs().argmax(0), torch.arange(32)] > 0).all()
