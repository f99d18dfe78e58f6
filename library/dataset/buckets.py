"""Aspect-ratio buckets (DATASET.md §6) and SDXL crop conditioning (§7). Pure, torch-free.

Sizes are ``(width, height)`` in pixels throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes.

    Attributes:
        bucket: ``(w, h)`` of the bucket.
        resized: ``(w, h)`` the image is resized to before the trim.
        ar_error: ``bucket_w / bucket_h - w / h`` (signed, as kohya's ``ar_errors``).
    """

    bucket: tuple[int, int]
    resized: tuple[int, int]
    ar_error: float


def make_bucket_list(resolution: tuple[int, int], min_reso: int, max_reso: int,
                     steps: int) -> list[tuple[int, int]]:
    """The predefined bucket list of normal mode (DATASET.md §6.1), sorted by ``(w, h)``."""
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // steps) * steps
    buckets = {(side, side)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, int((max_area // width) // steps) * steps)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += steps
    return sorted(buckets)


def cover_resize(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """Scale ``size`` so it covers ``bucket`` (one side equal, the other ≥)."""
    w, h = size
    if w / h > bucket[0] / bucket[1]:
        scale = bucket[1] / h
    else:
        scale = bucket[0] / w
    return (int(w * scale + 0.5), int(h * scale + 0.5))


def assign_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> BucketChoice:
    """Normal-mode assignment: exact match, else the closest aspect ratio (first on ties)."""
    w, h = size
    ar = w / h
    if tuple(size) in set(buckets):
        bucket = tuple(size)
    else:
        errors = [abs(b[0] / b[1] - ar) for b in buckets]
        bucket = buckets[errors.index(min(errors))]
    return BucketChoice(bucket, cover_resize(size, bucket), bucket[0] / bucket[1] - ar)


def _round_steps(x: float, steps: int) -> int:
    x = int(x + 0.5)
    return x - x % steps


def no_upscale_bucket(size: tuple[int, int], max_area: int, steps: int) -> BucketChoice:
    """``bucket_no_upscale`` mode (DATASET.md §6.3): shrink to max_area if needed, floor to steps."""
    w, h = size
    ar = w / h
    if w * h > max_area:
        rw = math.sqrt(max_area * ar)
        rh = max_area / rw
        bw = _round_steps(rw, steps)
        err_a = abs(bw / max(_round_steps(bw / ar, steps), 1) - ar)
        bh = _round_steps(rh, steps)
        err_b = abs(_round_steps(bh * ar, steps) / max(bh, 1) - ar)
        if err_a < err_b:
            resized = (bw, int(bw / ar + 0.5))
        else:
            resized = (int(bh * ar + 0.5), bh)
    else:
        resized = (w, h)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    bucket_ar = bucket[0] / bucket[1] if bucket[1] else 0.0  # (0, 0): rejected by the caller
    return BucketChoice(bucket, resized, bucket_ar - ar)


def trim_offsets(resized: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """Centred trim offsets ``(left, top)`` = ``excess // 2`` per axis."""
    return (max(resized[0] - bucket[0], 0) // 2, max(resized[1] - bucket[1], 0) // 2)


def crop_ltrb(bucket: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """kohya's letterbox ``(left, top, right, bottom)`` of ``size`` fitted inside ``bucket`` (§7).

    kohya-compat: this is not the trim actually applied; SDXL conditioning reports it anyway.
    """
    bucket_ar = bucket[0] / bucket[1]
    image_ar = size[0] / size[1]
    if bucket_ar > image_ar:
        fit_w, fit_h = bucket[1] * image_ar, bucket[1]
    else:
        fit_w, fit_h = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - fit_w) // 2  # kohya-compat: letterbox value, float floor-division
    top = (bucket[1] - fit_h) // 2
    return (left, top, left + fit_w, top + fit_h)


def crop_top_left(bucket: tuple[int, int], ltrb, flipped: bool) -> tuple[int, int]:
    """The SDXL ``crop_top_left`` ``(top, left)`` from a letterbox ``ltrb`` (flip mirrors left)."""
    left = bucket[0] - ltrb[2] if flipped else ltrb[0]
    return (int(ltrb[1]), int(left))


def num_batches(bucket_sizes: list[int], batch_size: int) -> int:
    """Σ ceil(samples / batch_size) over buckets (CLI.md §7)."""
    return sum(math.ceil(n / batch_size) for n in bucket_sizes if n)
