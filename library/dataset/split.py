"""Regularization balancing (DATASET.md §8) and the disjoint validation split (§9). Pure."""

from __future__ import annotations

import math
import random


def balance_reg(reg_repeats: list[int], num_train_samples: int) -> list[int]:
    """Repeats per reg image after balancing against ``num_train_samples`` (T).

    Args:
        reg_repeats: each reg image's own ``num_repeats``, in subset then sorted-file order.
        num_train_samples: T = Σ images × repeats over the non-reg subsets.

    Returns:
        One count per reg image; 0 = not reached (unused). The sum is ≥ T (== T unless the
        first pass overshoots on the last image); all zeros when there are no reg images.
    """
    out = [0] * len(reg_repeats)
    if not reg_repeats:
        return out
    n = 0
    first = True
    while n < num_train_samples:
        for i, repeats in enumerate(reg_repeats):
            if first:
                out[i] = repeats
                n += repeats
            else:
                out[i] += 1
                n += 1
            if n >= num_train_samples:
                break
        first = False
    return out


def split_validation(keys: list, split: float, seed: int) -> tuple[list, list]:
    """Disjoint, complete ``(train, validation)`` split of one subset's items.

    sd-train: kohya's two independent shuffles/roundings can overlap; here one permutation from
    ``random.Random(seed)`` (same as ``random.seed(seed); random.shuffle``) is cut once.

    Args:
        keys: sorted file list (DB/CN) or metadata keys in file order (FT).
        split: fraction in (0, 1]; anything else returns ``(keys, [])``.
        seed: the validation seed.
    """
    if not 0 < split <= 1:
        return list(keys), []
    order = list(keys)
    random.Random(seed).shuffle(order)
    n_train = math.ceil(len(order) * (1 - split))
    return order[:n_train], order[n_train:]
