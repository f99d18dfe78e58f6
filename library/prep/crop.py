"""Resize + crop images into the exact bucket the trainer assigns (``prepare_images``).

Buckets come from the trainer's own code (:func:`library.dataset.prepare.assign_buckets` on a
:class:`library.dataset.specs.DatasetSpec` built from the same flags), so each output image has the
size of its bucket and the trainer puts it back into that bucket with no further resize or trim. The
``center`` crop takes the trainer's centred trim (the output pixels equal what training on the
original would see); ``focus`` moves the same window to the subject (:mod:`library.prep.focus`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from library.dataset import buckets as bk
from library.dataset.checks import check_bucket_settings
from library.dataset.images import resize
from library.dataset.prepare import assign_buckets
from library.dataset.records import ImageRecord
from library.dataset.specs import DatasetSpec, SubsetSpec
from library.prep.focus import Focus


@dataclass
class CropPlan:
    """How one image is turned into its output.

    Attributes:
        path: source image.  size: its ``(w, h)``.  bucket: output ``(w, h)``.
        resized: ``(w, h)`` before the crop.  offset: ``(left, top)`` of the crop in the resized image.
        focus: the subject found (``focus`` crops only).
    """

    path: Path
    size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    focus: Focus | None = None

    @property
    def source_box(self) -> tuple[float, float, float, float]:
        """The crop as ``(left, top, right, bottom)`` in the source image's pixels."""
        sx, sy = self.size[0] / self.resized[0], self.size[1] / self.resized[1]
        left, top = self.offset
        return (left * sx, top * sy, (left + self.bucket[0]) * sx, (top + self.bucket[1]) * sy)


def bucket_spec(resolution: tuple[int, int], enable_bucket: bool, min_bucket_reso: int, max_bucket_reso: int,
                bucket_reso_steps: int, bucket_no_upscale: bool, step_multiple: int) -> tuple[DatasetSpec, list[str]]:
    """A one-subset :class:`DatasetSpec` with the bucket settings, checked and rounded as the trainer does.

    Returns:
        ``(spec, warnings)``.

    Raises:
        UserError: settings the trainer would refuse (same messages).
    """
    spec = DatasetSpec(resolution=resolution, enable_bucket=enable_bucket, min_bucket_reso=min_bucket_reso,
                       max_bucket_reso=max_bucket_reso, bucket_reso_steps=bucket_reso_steps,
                       bucket_no_upscale=bucket_no_upscale, subsets=[SubsetSpec()])
    warnings: list[str] = []
    check_bucket_settings(spec, 0, step_multiple, warnings)
    return spec, warnings


def plan_buckets(spec: DatasetSpec, sizes: dict[Path, tuple[int, int]]) -> list[CropPlan]:
    """One :class:`CropPlan` per image with the trainer's bucket and resize and the centred offset."""
    records = [ImageRecord(path=str(p), caption="", size=s, subset=0) for p, s in sizes.items()]
    assign_buckets(spec, records)
    return [CropPlan(Path(r.path), r.size, r.bucket, r.resized, bk.trim_offsets(r.resized, r.bucket))
            for r in records]


def focus_offset(plan: CropPlan, focus: Focus) -> tuple[int, int]:
    """``(left, top)`` of the bucket window centred on ``focus`` (scaled into the resized image), kept inside."""
    cx = focus.centre[0] * plan.resized[0] / plan.size[0]
    cy = focus.centre[1] * plan.resized[1] / plan.size[1]
    left = min(max(int(round(cx - plan.bucket[0] / 2)), 0), plan.resized[0] - plan.bucket[0])
    top = min(max(int(round(cy - plan.bucket[1] / 2)), 0), plan.resized[1] - plan.bucket[1])
    return (max(left, 0), max(top, 0))


def area_limited(path: Path, size: tuple[int, int], max_area: int, divisible_by: int) -> CropPlan:
    """kohya's ``resize_images_to_resolution`` rule: shrink to at most ``max_area`` pixels keeping the aspect
    ratio, then trim each side down to a multiple of ``divisible_by`` (centred). No bucket is involved."""
    w, h = size
    if w * h > max_area:
        factor = math.sqrt(max_area / (w * h))
        w, h = int(w * factor), int(h * factor)
    resized = (w, h)
    out = (w - w % divisible_by, h - h % divisible_by)
    return CropPlan(path, size, out, resized, bk.trim_offsets(resized, out))


def render(arr: np.ndarray, plan: CropPlan, interpolation: str | None) -> np.ndarray:
    """Resize ``arr`` (H, W, C) to ``plan.resized`` with the trainer's filter rule, then cut the bucket window."""
    out = resize(arr, plan.resized, interpolation)
    left, top = plan.offset
    return np.ascontiguousarray(out[top:top + plan.bucket[1], left:left + plan.bucket[0]])
