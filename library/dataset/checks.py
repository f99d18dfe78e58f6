"""Per-dataset settings checks of the pre-pass (DATASET.md §3.1, §6.4), before any model loads."""

from __future__ import annotations

from library.dataset.specs import DatasetSpec
from library.errors import UserError


def _check_steps(spec: DatasetSpec, given: str, step_multiple: int, warnings: list[str]) -> None:
    """kohya asserts the model's step multiple only for DreamBooth / fine-tuning datasets with buckets; a
    conditioning (masked_loss) dataset leaves its own steps unset, so kohya never checks them.

    Args:
        given: How the user gave the value (``datasets[0].bucket_reso_steps = 32``), for messages.
    """
    steps = spec.bucket_reso_steps
    if steps <= 0:  # kohya divides by it
        raise UserError(f"{given}: must be a positive multiple of {step_multiple}")
    if not steps % step_multiple:
        return
    if spec.kind == "CN":  # kohya-compat
        warnings.append(f"{given} is not a multiple of {step_multiple}; kohya does not check it for "
                        f"conditioning (masked_loss) datasets, so buckets use {steps}-pixel steps")
        return
    raise UserError(f"{given}: must be a multiple of {step_multiple} for this model (kohya asserts it too); "
                    f"use {step_multiple * max(1, round(steps / step_multiple))}")


def check_bucket_settings(spec: DatasetSpec, index: int, step_multiple: int,
                          warnings: list[str], from_config: bool = True) -> None:
    """Validate/round the bucket settings of one dataset in place (DATASET.md §3.1).

    Args:
        from_config: The dataset comes from a dataset TOML/JSON (messages name ``datasets[i]``), else from
            the command line (messages name the flag).
    """
    where = f"datasets[{index}]"
    steps = spec.bucket_reso_steps
    if spec.batch_size < 1:
        raise UserError(f"{where}: batch_size {spec.batch_size} must be at least 1")
    if min(spec.resolution) < 1:
        raise UserError(f"{where}: resolution {spec.resolution[0]}x{spec.resolution[1]} must be positive")
    if not spec.enable_bucket:  # kohya-compat: the bucket settings are not read (nor checked)
        bad = [side for side in spec.resolution if side % step_multiple]
        if bad:  # sd-train: kohya stops at the first step with a UNet shape error
            raise UserError(f"{where}: resolution {spec.resolution[0]}x{spec.resolution[1]} is not a multiple of "
                            f"{step_multiple} (the UNet halves the latents until then); without bucketing use e.g. "
                            f"{_round(spec.resolution[0], step_multiple)}x{_round(spec.resolution[1], step_multiple)}"
                            ", or enable_bucket")
        return
    given = f"{where}.bucket_reso_steps = {steps}" if from_config else f"--bucket_reso_steps {steps}"
    _check_steps(spec, given, step_multiple, warnings)
    if spec.bucket_no_upscale:
        warnings.append(f"{where}: bucket_no_upscale ignores min/max_bucket_reso")
        return
    if spec.min_bucket_reso < steps:  # sd-train: kohya rounds it to 0 and divides by zero
        raise UserError(f"{where}: min_bucket_reso {spec.min_bucket_reso} is below bucket_reso_steps {steps} "
                        f"(it would round down to 0); use at least {steps}")
    if spec.min_bucket_reso % steps:
        spec.min_bucket_reso -= spec.min_bucket_reso % steps
        warnings.append(f"{where}: min_bucket_reso rounded down to {spec.min_bucket_reso}")
    if spec.max_bucket_reso % steps:
        spec.max_bucket_reso += steps - spec.max_bucket_reso % steps
        warnings.append(f"{where}: max_bucket_reso rounded up to {spec.max_bucket_reso}")
    if spec.min_bucket_reso > min(spec.resolution):
        raise UserError(f"{where}: min_bucket_reso {spec.min_bucket_reso} must be <= "
                        f"min(resolution) {min(spec.resolution)}")
    if spec.max_bucket_reso < max(spec.resolution):
        raise UserError(f"{where}: max_bucket_reso {spec.max_bucket_reso} must be >= "
                        f"max(resolution) {max(spec.resolution)}")


def _round(side: int, multiple: int) -> int:
    return max(multiple, side - side % multiple)


def check_fixed_size(spec: DatasetSpec, records: list, index: int) -> None:
    """Without bucketing, images decoded at training time must already have the resolution, or be larger
    with ``random_crop`` / face-crop data (DATASET.md §6.4). Checked on header sizes, so it fails before
    any model loads (kohya fails when the image is first loaded)."""
    width, height = spec.resolution
    for rec in records:
        sub = spec.subsets[rec.subset]
        if rec.face and sub.face_crop_aug_range:
            continue
        w, h = rec.size
        if (w > width or h > height) and not sub.random_crop:
            raise UserError(f"{rec.path}: image too large ({w}x{h} > resolution {width}x{height}), but cropping "
                            f"and bucketing are disabled (datasets[{index}]); enable_bucket or random_crop, "
                            "or resize the image")
        if w < width or h < height:
            raise UserError(f"{rec.path}: image is {w}x{h}, smaller than resolution {width}x{height} "
                            f"(datasets[{index}]); enable_bucket or resize it")
