"""Plain records produced by the pre-pass: one per image, one per subset, one per dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

from library.dataset.captions import CaptionOptions
from library.dataset.specs import DatasetSpec, SubsetSpec


@dataclass
class ImageRecord:
    """One image of one dataset.

    Attributes:
        path: image file.
        caption: raw caption (before DATASET.md §5 processing).
        size: original ``(w, h)`` from the header.
        subset: index into the dataset's subsets.
        num_repeats: samples per epoch (reg images: after balancing).
        bucket / resized: ``(w, h)`` of the bucket and of the resize before the trim.
        ar_error: bucket aspect ratio minus image aspect ratio.
        face: ``(cx, cy, w, h)`` from a face-crop file name, or None.
        cond_path: conditioning (mask) image for CN subsets.
        latents / latents_flipped / cached_alpha: in-memory cache, ``(4, h/8, w/8)`` / ``(h, w)``.
        npz_path: disk cache file, read at fetch time when set.
        te_outputs: cached ``(hidden1, hidden2, pool2)`` text-encoder outputs.
    """

    path: str
    caption: str
    size: tuple[int, int]
    subset: int
    is_reg: bool = False
    num_repeats: int = 1
    bucket: tuple[int, int] = (0, 0)
    resized: tuple[int, int] = (0, 0)
    ar_error: float = 0.0
    face: tuple[int, int, int, int] | None = None
    cond_path: str | None = None
    caption_found: bool = True
    tags: str = ""
    latents: object = None
    latents_flipped: object = None
    cached_alpha: object = None
    npz_path: str | None = None
    te_outputs: object = None


@dataclass
class SubsetStats:
    """What the scan found for one subset (feeds the report and ss_* metadata)."""

    spec: SubsetSpec
    caption_options: CaptionOptions
    img_count: int = 0
    captions_missing: int = 0
    empty_captions: int = 0
    orphan_captions: list[str] = field(default_factory=list)
    duplicate: bool = False


@dataclass
class PreparedDataset:
    """One dataset after scan, split, balancing and bucketing.

    Attributes:
        spec: the resolved declaration.
        index: position in the plan (``datasets[index]``).
        subsets: per-subset stats, same order as ``spec.subsets``.
        records: every image with ``num_repeats`` > 0.
        buckets: ``[(bucket_wh, [(record_index, repeat_index), ...]), ...]`` sorted by bucket.
        is_validation: True for the validation twin.
        num_train_images: non-reg samples with repeats.
        num_reg_images: reg samples with repeats, before balancing.
        tag_frequency: ``{dir_name: {tag: count}}``.
    """

    spec: DatasetSpec
    index: int
    subsets: list[SubsetStats]
    records: list[ImageRecord]
    buckets: list = field(default_factory=list)
    is_validation: bool = False
    num_train_images: int = 0
    num_reg_images: int = 0
    tag_frequency: dict = field(default_factory=dict)
    prior_loss_weight: float = 1.0
    max_train_steps: int = 1600
    warnings: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """Images per batch of this dataset."""
        return self.spec.batch_size

    def num_samples(self) -> int:
        """Samples per epoch including repeats and balanced reg images."""
        return sum(len(samples) for _, samples in self.buckets)
