"""Exact SVD of low-rank LoRA products, rank selection and clamping (TOOLS.md §2–§5).

``ΔW = up @ down`` has rank ≤ R: its SVD comes from Householder QRs of both factors and the SVD of the
R×R core, ``O((out + n)·R² + R³)`` plus ``O((out + n)·R·k)`` for ``k`` output vectors, instead of the
dense ``O(out·n·min(out, n))``. Shared by resize_lora, svd_merge_lora, merge_lora and extract_lora."""

from __future__ import annotations

from typing import NamedTuple

import torch

from library.lora.algebra import lora_scale

ZERO_SV = 1e-6  # kohya-compat: resize_lora's MIN_SV, below which a module counts as all-zero


def _fix_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (u, v) pair so the largest-magnitude entry of every ``u`` column is positive."""
    if u.shape[1] == 0:
        return u, vh
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign, vh * sign[:, None]


class FactorSVD(NamedTuple):
    """Singular values of ``up @ down`` plus what is needed to form any leading singular vectors.

    ``s (m,)``, ``m = min(R, out, n)``, descending. Factored case: ``hb, tau_b`` / ``ha, tau_a`` are
    ``torch.geqrf`` of ``up (out, R)`` / ``downᵀ (n, R)``, ``um``, ``vm`` ``(R, R)`` the core's singular
    vectors. Dense case (``R >= min(out, n)``): ``um (out, m)``, ``vm (n, m)`` are the product's.
    """

    s: torch.Tensor
    um: torch.Tensor
    vm: torch.Tensor
    hb: torch.Tensor | None = None
    tau_b: torch.Tensor | None = None
    ha: torch.Tensor | None = None
    tau_a: torch.Tensor | None = None


def factor_svd(up: torch.Tensor, down: torch.Tensor) -> FactorSVD:
    """Singular values of ``up @ down`` from the factors: ``O((out + n)·R² + R³)``, no ``out × n`` matrix.

    Args:
        up: ``(out, R)`` matrix (conv factors must be flattened by the caller).
        down: ``(R, n)`` matrix, same dtype and device as ``up``.

    Returns:
        A :class:`FactorSVD` (Q factors are never formed: the core is ``R_B · R_Aᵀ``); pass it to
        :func:`singular_vectors` for the leading ``k`` vectors.
    """
    out, rank = up.shape
    n = down.shape[1]
    if rank >= min(out, n):
        u, s, vh = torch.linalg.svd(up @ down, full_matrices=False)
        return FactorSVD(s, u, vh.mT)
    hb, tau_b = torch.geqrf(up)
    ha, tau_a = torch.geqrf(down.mT)
    core = hb[:rank].triu() @ ha[:rank].triu().mT
    um, s, vmh = torch.linalg.svd(core)
    return FactorSVD(s, um, vmh.mT, hb, tau_b, ha, tau_a)


def _apply_q(h: torch.Tensor, tau: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``Q @ small`` for the thin ``Q`` of a ``geqrf`` result ``h (rows, R)``; ``small`` is ``(R, k)``."""
    padded = small.new_zeros(h.shape[0], small.shape[1])
    padded[: small.shape[0]] = small
    return torch.ormqr(h, tau, padded)


def singular_vectors(f: FactorSVD, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``k`` singular vectors ``(U (out, k), Vh (k, n))`` of a :func:`factor_svd` result.

    Only ``Q_B @ U_M[:, :k]`` and ``(Q_A @ V_M[:, :k])ᵀ`` are formed (``O((out + n)·R·k)``, Householder
    products applied with ``torch.ormqr``). Signs follow :func:`_fix_signs`; ``k`` is capped at ``m``.
    """
    k = f.s.shape[0] if k is None else min(k, f.s.shape[0])
    if f.hb is None:
        u, v = f.um[:, :k], f.vm[:, :k]
    else:
        u = _apply_q(f.hb, f.tau_b, f.um[:, :k])
        v = _apply_q(f.ha, f.tau_a, f.vm[:, :k])
    return _fix_signs(u, v.mT)


def product_svd(up: torch.Tensor, down: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ``up @ down`` computed from the factors (QR of both + SVD of the R×R core, TOOLS.md §2).

    Args:
        up: ``(out, R)`` matrix (conv factors must be flattened by the caller).
        down: ``(R, n)`` matrix, same dtype and device as ``up``.
        k: number of singular vector pairs to form (None: all ``m``).

    Returns:
        ``(U (out, k), S (m,), Vh (k, n))``, ``m = min(R, out, n)``, all of ``S`` (descending); with
        ``k = m``, ``U @ diag(S) @ Vh == up @ down`` to rounding. Signs as :func:`_fix_signs`.
    """
    f = factor_svd(up, down)
    u, vh = singular_vectors(f, k)
    return u, f.s, vh


def truncate_svd(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up (out, k), down (k, n))`` with ``up = U[:, :k]·diag(S[:k])``; missing columns (k > len(S)) are zero."""
    m = min(k, s.shape[0])
    up = u[:, :m] * s[:m]
    down = vh[:m]
    if k > m:
        up = torch.cat([up, up.new_zeros(up.shape[0], k - m)], dim=1)
        down = torch.cat([down, down.new_zeros(k - m, down.shape[1])], dim=0)
    return up, down


def padded_singular_values(s: torch.Tensor, full_len: int) -> torch.Tensor:
    """``S`` padded with zeros to ``min(out, n)`` so dynamic rules see the dense SVD's spectrum."""
    return torch.cat([s, s.new_zeros(max(0, full_len - s.shape[0]))])


def dynamic_rank(s: torch.Tensor, method: str, param: float) -> int:
    """Rank picked by kohya's dynamic rules (TOOLS.md §3) from a descending spectrum ``s``.

    Args:
        s: singular values padded to ``min(out, n)`` (see :func:`padded_singular_values`).
        method: ``sv_ratio``, ``sv_cumulative`` or ``sv_fro``.
        param: the rule's parameter (ratio, or target fraction in (0, 1]).

    Returns:
        ``k >= 1`` before any cap; 1 for an all-zero matrix.
    """
    s = s.double()
    if s.numel() == 0 or float(s[0]) <= ZERO_SV:
        return 1
    n = s.shape[0]
    if method == "sv_ratio":
        idx = int((s > s[0] / param).sum())
    elif method == "sv_cumulative":
        idx = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(float(param), dtype=s.dtype))) + 1
    elif method == "sv_fro":
        sq = s.pow(2)
        idx = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor(float(param) ** 2, dtype=s.dtype))) + 1
    else:
        raise ValueError(f"unknown dynamic method {method!r}")
    return 1 + max(1, min(idx, n - 1))


def retention_stats(s: torch.Tensor, k: int) -> tuple[float, float, float]:
    """kohya's resize report: fraction of ``Σσ`` and of the Frobenius norm kept, and ``σ₀ / σ_{k−1}``."""
    s = s.double()
    total, fro = float(s.sum()), float(s.pow(2).sum())
    if total <= 0:
        return 1.0, 1.0, 1.0
    kept = s[:k]
    last = float(kept[-1]) if kept.numel() else 0.0
    ratio = float(s[0]) / last if last > 0 else float("inf")
    return float(kept.sum()) / total, (float(kept.pow(2).sum()) / fro) ** 0.5, ratio


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile`` (linear interpolation) without its input-size limit."""
    if values.numel() <= 16_000_000:
        return torch.quantile(values, q)
    v = values.sort().values
    pos = q * (v.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def clamp_quantile(up: torch.Tensor, down: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp both factors to ``[-h, h]``, ``h`` = the ``q`` quantile of their concatenated signed values (kohya)."""
    dist = torch.cat([up.flatten(), down.flatten()]).float()
    hi = _quantile(dist, q).to(up.dtype)
    return up.clamp(-hi, hi), down.clamp(-hi, hi)


def flatten_factors(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices of LoRA factors: ``up (out, r)`` and ``down (r, in·kh·kw)``."""
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def unflatten_factors(up: torch.Tensor, down: torch.Tensor, down_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape matrix factors back to the layout of ``down_shape`` (``(r, in)`` or ``(r, in, kh, kw)``)."""
    k = down.shape[0]
    if len(down_shape) == 2:
        return up, down
    return up.reshape(up.shape[0], k, 1, 1), down.reshape(k, *down_shape[1:])


def resize_factors(down: torch.Tensor, up: torch.Tensor, alpha: float | None, max_rank: int,
                   method: str | None = None, param: float | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, float, tuple]:
    """Resize one LoRA module (kohya ``resize_lora`` semantics, exact factor SVD of TOOLS.md §2).

    Args:
        down: ``(r, in)`` or ``(r, in, kh, kw)``.
        up: ``(out, r)`` or ``(out, r, 1, 1)``.
        alpha: stored alpha (None: ``r``).
        max_rank: target rank, or the cap for a dynamic method.
        method, param: None, or ``sv_ratio`` / ``sv_cumulative`` / ``sv_fro`` and its parameter.
        device: where the QR/SVD run.

    Returns:
        ``(new_down, new_up, new_alpha, (S padded to min(out, n), k))`` in float32 on the CPU;
        ``new_alpha = alpha / r · k`` keeps the effective scale. Only ``k`` vector pairs are formed.
    """
    rank = down.shape[0]
    u2, d2 = flatten_factors(up.to(device, torch.float32), down.to(device, torch.float32))
    f = factor_svd(u2, d2)
    s_full = padded_singular_values(f.s, min(u2.shape[0], d2.shape[1]))
    k = 1 if float(s_full[0]) <= ZERO_SV else dynamic_rank(s_full, method, param) if method else max_rank
    k = max(1, min(k, max_rank, u2.shape[0], d2.shape[1]))
    u, vh = singular_vectors(f, k)
    new_up, new_down = truncate_svd(u, f.s, vh, k)
    new_up, new_down = unflatten_factors(new_up.cpu(), new_down.cpu(), tuple(down.shape))
    scale = (float(alpha) if alpha else rank) / rank
    return new_down, new_up, scale * k, (s_full.cpu(), k)


def svd_merge_factors(items, rank: int, device: torch.device | str | None = None,
                      clamp: float | None = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge several LoRAs of one module into rank ``rank`` (``svd_merge_lora``, TOOLS.md §4).

    Args:
        items: ``(down, up, alpha, weight)`` per input; ``weight`` = ratio (× layer-block weight).
            All downs must flatten to the same ``(·, n)`` and ups to ``(out, ·)``.
        rank: output rank before the cap ``min(rank, out, n)``.
        device: where the QR/SVD run.
        clamp: quantile of the signed-value clamp, None for none.

    Returns:
        ``(down, up)`` in float32 on the CPU, shaped like the first input's factors; use alpha = rank.
    """
    ups, downs = [], []
    for down, up, alpha, weight in items:
        u2, d2 = flatten_factors(up.to(device, torch.float32), down.to(device, torch.float32))
        ups.append(u2 * (float(weight) * lora_scale(alpha, down.shape[0])))
        downs.append(d2)
    big_up, big_down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    k = min(rank, big_up.shape[0], big_down.shape[1])
    u, s, vh = product_svd(big_up, big_down, k)
    new_up, new_down = truncate_svd(u, s, vh, k)
    if clamp is not None:
        new_up, new_down = clamp_quantile(new_up, new_down, clamp)
    up_o, down_o = unflatten_factors(new_up.cpu(), new_down.cpu(), tuple(items[0][0].shape))
    return down_o, up_o


def concat_merge(items) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact LoRA sum by concatenating ranks (``merge_lora --concat``).

    Args:
        items: ``(down, up, alpha, ratio)`` per input, factors shaped alike except for the rank.

    Returns:
        ``(down (ΣR, …), up (out, ΣR, …), alpha = ΣR)``: with scale 1 the product equals
        ``Σ ratio_i · alpha_i / r_i · up_i @ down_i``. Each input's coefficient is split as
        ``sqrt(|c|)`` on both factors and its sign on ``up``.
    """
    downs, ups = [], []
    shape = items[0][0].shape[1:]
    for down, up, alpha, ratio in items:
        c = float(ratio) * lora_scale(alpha, down.shape[0])
        root = abs(c) ** 0.5
        downs.append(down.float().reshape(down.shape[0], *shape) * root)
        ups.append(up.float().reshape(up.shape[0], down.shape[0], *up.shape[2:]) * (root if c >= 0 else -root))
    down, up = torch.cat(downs, dim=0), torch.cat(ups, dim=1)
    return down, up, float(down.shape[0])


def shuffle_ranks(down: torch.Tensor, up: torch.Tensor, generator: torch.Generator | None = None):
    """Permute the rank channels of a module (same permutation for ``down`` rows and ``up`` columns)."""
    perm = torch.randperm(down.shape[0], generator=generator)
    return down[perm], up[:, perm]


def extract_factors(delta: torch.Tensor, rank: int, clamp: float | None = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors of a weight difference (``extract_lora``): reduced SVD, ``up = U·diag(S)``, ``down = Vh``.

    Args:
        delta: ``(out, in)`` or ``(out, in, kh, kw)`` float tensor (tuned − original).
        rank: requested rank, capped at ``min(out, in·kh·kw)``.
        clamp: signed-value quantile clamp (kohya's ``--clamp_quantile``), None for none.

    Returns:
        ``(down, up)`` shaped ``(k, in[, kh, kw])`` and ``(out, k[, 1, 1])``, on ``delta``'s device.
    """
    mat = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    u, vh = _fix_signs(u, vh)
    up, down = truncate_svd(u, s, vh, min(rank, *mat.shape))
    if clamp is not None:
        up, down = clamp_quantile(up, down, clamp)
    if delta.dim() == 2:
        return down, up
    return down.reshape(down.shape[0], *delta.shape[1:]), up.reshape(up.shape[0], up.shape[1], 1, 1)
