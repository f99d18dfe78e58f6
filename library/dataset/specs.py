"""Resolved dataset declarations: plain dataclasses with every fallback already applied."""

from __future__ import annotations

from dataclasses import dataclass, field

from library.dataset.captions import add_caption_fields


@dataclass
@add_caption_fields(after="alpha_mask")
class SubsetSpec:
    """One resolved subset: every key of SCHEMA that a subset may carry (the caption rules' fields are
    generated from ``library.dataset.captions.CAPTION_RULES``), plus its kind."""

    kind: str = "DB"
    image_dir: str | None = None
    metadata_file: str | None = None
    conditioning_data_dir: str | None = None
    is_reg: bool = False
    class_tokens: str | None = None
    num_repeats: int = 1
    caption_extension: str = ".caption"
    cache_info: bool = False
    alpha_mask: bool = False
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    face_crop_aug_range: tuple[float, float] | None = None
    resize_interpolation: str | None = None
    custom_attributes: dict = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """One resolved dataset: resolution ``(w, h)``, batch and bucket settings and its subsets."""

    kind: str = "DB"
    resolution: tuple[int, int] = (512, 512)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    network_multiplier: float = 1.0
    validation_split: float = 0.0
    validation_seed: int | None = None
    resize_interpolation: str | None = None
    subsets: list[SubsetSpec] = field(default_factory=list)


@dataclass
class DatasetPlan:
    """The whole data declaration: datasets plus run-wide values the dataset layer needs."""

    datasets: list[DatasetSpec]
    source: str
    mode: str
    prior_loss_weight: float = 1.0
    max_train_steps: int = 1600
    warnings: list[str] = field(default_factory=list)
