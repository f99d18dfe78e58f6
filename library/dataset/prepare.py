"""The pre-pass: scan images and captions, check every image header, split, balance, bucket.

Runs before any model is loaded; reads headers only (DATASET.md §4, §6, §8, §9).
"""

from __future__ import annotations

import dataclasses
import os

from library.dataset import buckets as bk
from library.dataset import scan
from library.dataset.captions import CaptionOptions, count_tags
from library.dataset.checks import check_bucket_settings, check_fixed_size
from library.dataset.records import ImageRecord, PreparedDataset, SubsetStats
from library.dataset.specs import DatasetPlan, DatasetSpec, SubsetSpec
from library.dataset.split import balance_reg, split_validation
from library.errors import UserError


def _orphans(sub: SubsetSpec, images: list[str]) -> list[str]:
    ext = sub.caption_extension
    if not ext:
        return []
    stems = {os.path.splitext(p)[0] for p in images}
    return sorted(os.path.join(sub.image_dir, n) for n in os.listdir(sub.image_dir)
                  if n.endswith(ext) and os.path.join(sub.image_dir, n)[:-len(ext)] not in stems)


def _conditioning(sub: SubsetSpec, images: list[str]) -> dict[str, str]:
    conds = scan.list_images(sub.conditioning_data_dir, "conditioning_data_dir")
    by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in conds}
    stems = {os.path.splitext(os.path.basename(p))[0] for p in images}
    missing = sorted(stems - set(by_stem))
    extra = sorted(set(by_stem) - stems)
    if missing or extra:
        raise UserError(f"{sub.conditioning_data_dir}: conditioning images do not match "
                        f"{sub.image_dir}: missing {missing[:10]}, without image {extra[:10]}")
    return {p: by_stem[os.path.splitext(os.path.basename(p))[0]] for p in images}


def _scan_folder(sub: SubsetSpec, si: int, stats: SubsetStats) -> list[ImageRecord]:
    images = scan.list_images(sub.image_dir)
    cache = scan.load_cache_info(sub.image_dir) if sub.cache_info else {}
    conds = _conditioning(sub, images) if sub.kind == "CN" else {}
    records = []
    for path in images:
        cached = cache.get(path)
        size = scan.check_image(path)
        caption = cached["caption"] if cached else scan.find_caption(
            path, sub.caption_extension, sub.enable_wildcard)
        found = caption is not None
        if not found:
            stats.captions_missing += 1
            caption = sub.class_tokens or ""
        if not caption:
            stats.empty_captions += 1
        records.append(ImageRecord(path=path, caption=caption, size=size, subset=si,
                                   is_reg=sub.is_reg, num_repeats=sub.num_repeats,
                                   face=scan.face_info(path), cond_path=conds.get(path),
                                   caption_found=found))
    stats.orphan_captions = _orphans(sub, images)
    if sub.cache_info:
        scan.save_cache_info(sub.image_dir, {r.path: {"caption": r.caption,
                                                      "resolution": list(r.size)}
                                             for r in records})
    return records


def _scan_metadata(sub: SubsetSpec, si: int, stats: SubsetStats) -> list[ImageRecord]:
    rows = scan.load_metadata(sub.metadata_file, sub.image_dir, sub.caption_separator,
                              sub.enable_wildcard)
    records = []
    for row in rows:
        path = scan.resolve_image_path(row["path"])
        size = scan.check_image(path)
        if not row["caption"]:
            stats.empty_captions += 1
        records.append(ImageRecord(path=path, caption=row["caption"], size=size, subset=si,
                                   num_repeats=sub.num_repeats, face=scan.face_info(path),
                                   tags=row["tags"]))
    return records


CAPTION_LIKE = (".txt", ".caption", ".tags", ".wd14")  # extensions tried for the caption_extension hint


def _caption_hints(sub: SubsetSpec, records: list[ImageRecord], stats: SubsetStats) -> list[str]:
    """sd-train: kohya logs a line per image without a caption; here one warning per subset names the fix:
    caption files of another extension next to the images, or images that train on an empty caption."""
    hints = []
    stems = [os.path.splitext(r.path)[0] for r in records if not r.caption_found]
    other = next((ext for ext in CAPTION_LIKE if ext != sub.caption_extension
                  and any(os.path.isfile(stem + ext) for stem in stems)), None)
    if other:
        hints.append(f"{sub.image_dir}: {len(stems)} images have no {sub.caption_extension} caption file but {other} "
                     f"files are next to them: set caption_extension = \"{other}\"")
    if stats.empty_captions:
        hints.append(f"{sub.image_dir}: {stats.empty_captions} of {len(records)} images train with an empty caption "
                     f"(no or empty {sub.caption_extension} files, no class_tokens); add captions or set class_tokens")
    return hints


def _subset_key(sub: SubsetSpec):
    return (sub.image_dir, sub.metadata_file, sub.conditioning_data_dir)


def scan_dataset(spec: DatasetSpec, warnings: list[str]):
    """Scan every subset of one dataset; returns ``(stats, records)``; duplicates are skipped."""
    seen, stats_list, records = set(), [], []
    for si, sub in enumerate(spec.subsets):
        stats = SubsetStats(spec=sub, caption_options=CaptionOptions.from_subset(sub))
        stats_list.append(stats)
        if _subset_key(sub) in seen:
            stats.duplicate = True
            warnings.append(f"subset {_subset_key(sub)[0] or sub.metadata_file} appears twice in "
                            "one dataset; the later one is ignored")
            continue
        seen.add(_subset_key(sub))
        found = _scan_metadata(sub, si, stats) if sub.kind == "FT" else _scan_folder(sub, si, stats)
        stats.img_count = len(found)
        if not found:
            warnings.append(f"{sub.image_dir or sub.metadata_file}: no images found")
        elif sub.kind != "FT":
            warnings += _caption_hints(sub, found, stats)
        records += found
    return stats_list, records


def assign_buckets(spec: DatasetSpec, records: list[ImageRecord]) -> list:
    """Set ``bucket``/``resized``/``ar_error`` on every record and group the samples.

    Returns:
        ``[(bucket_wh, [(record_index, repeat_index), ...])]`` sorted by bucket ``(w, h)``.
    """
    res = spec.resolution
    if spec.enable_bucket and not spec.bucket_no_upscale:
        bucket_list = bk.make_bucket_list(res, spec.min_bucket_reso, spec.max_bucket_reso,
                                          spec.bucket_reso_steps)
    elif not spec.enable_bucket:
        bucket_list = [tuple(res)]
    groups: dict = {}
    for i, rec in enumerate(records):
        if spec.enable_bucket and spec.bucket_no_upscale:
            choice = bk.no_upscale_bucket(rec.size, res[0] * res[1], spec.bucket_reso_steps)
        else:
            choice = bk.assign_bucket(rec.size, bucket_list)
        if min(choice.bucket) <= 0:  # sd-train: kohya would build a zero-sized bucket
            raise UserError(f"{rec.path}: {rec.size[0]}x{rec.size[1]} is smaller than "
                            f"bucket_reso_steps {spec.bucket_reso_steps}; remove or enlarge it")
        rec.bucket, rec.resized, rec.ar_error = choice.bucket, choice.resized, choice.ar_error
        groups.setdefault(rec.bucket, []).extend((i, k) for k in range(rec.num_repeats))
    return sorted(groups.items())


def _tag_frequency(stats: list[SubsetStats], records: list[ImageRecord]) -> dict:
    freq: dict = {}
    for si, st in enumerate(stats):
        sub = st.spec
        if sub.kind == "FT":
            name, texts = os.path.basename(sub.metadata_file), [
                r.tags for r in records if r.subset == si]
        else:
            name, texts = os.path.basename(sub.image_dir), [
                r.caption for r in records if r.subset == si]
        count_tags(texts, freq.setdefault(name, {}))
    return freq


def _balance(ds: PreparedDataset) -> None:
    reg = [r for r in ds.records if r.is_reg]
    total = sum(r.num_repeats for r in ds.records if not r.is_reg)
    ds.num_train_images = total
    ds.num_reg_images = sum(r.num_repeats for r in reg)
    if not reg:
        return
    counts = balance_reg([r.num_repeats for r in reg], total)
    for rec, n in zip(reg, counts):
        rec.num_repeats = n
    unused = counts.count(0)
    if unused:
        ds.warnings.append(f"datasets[{ds.index}]: {unused} regularization images are not used "
                           f"(more than the {total} training samples)")
    ds.records = [r for r in ds.records if r.num_repeats > 0]


def _split(spec: DatasetSpec, records: list[ImageRecord], seed: int, warnings: list[str]):
    split = spec.validation_split
    if split and not 0 < split <= 1:
        warnings.append(f"validation_split {split} is outside (0, 1]; no validation split")
    if not 0 < split <= 1:
        return records, []
    vseed = spec.validation_seed if spec.validation_seed is not None else seed
    train, val = [], []
    for si in sorted({r.subset for r in records}):
        subset_recs = [r for r in records if r.subset == si]
        if subset_recs[0].is_reg:
            train += subset_recs
            continue
        keep, held = split_validation(subset_recs, split, vseed)
        kept = {id(r) for r in keep}
        train += [r for r in subset_recs if id(r) in kept]
        val += [dataclasses.replace(r, num_repeats=1) for r in held]
    return train, val


def prepare_dataset(spec: DatasetSpec, index: int, plan: DatasetPlan, seed: int,
                    step_multiple: int, latents_cached: bool = False) -> tuple[PreparedDataset, PreparedDataset | None]:
    """Pre-pass of one dataset: returns the training dataset and its validation twin or None."""
    warnings: list[str] = []
    check_bucket_settings(spec, index, step_multiple, warnings, from_config=plan.mode == "config")
    stats, records = scan_dataset(spec, warnings)
    if spec.enable_bucket and any(s.face_crop_aug_range for s in spec.subsets):
        # kohya-compat: face crops are applied only without bucketing.
        warnings.append(f"datasets[{index}]: face_crop_aug_range is ignored with enable_bucket")
    if not records:
        dirs = ", ".join(s.image_dir or s.metadata_file for s in spec.subsets)
        raise UserError(f"datasets[{index}]: no images found in {dirs} (extensions: "
                        f"{' '.join(scan.image_extensions())})")
    if not spec.enable_bucket and not latents_cached:
        check_fixed_size(spec, records, index)
    if any(r.is_reg for r in records) and spec.kind == "FT":
        raise UserError(f"datasets[{index}]: regularization subsets need a DreamBooth dataset")
    if all(r.is_reg for r in records):
        raise UserError(f"datasets[{index}]: every subset is regularization (is_reg = true); add a subset of "
                        "training images")
    train, val = _split(spec, records, seed, warnings)
    if not any(not r.is_reg for r in train):
        raise UserError(f"datasets[{index}]: validation_split {spec.validation_split} leaves no "
                        "training images; lower it")
    common = dict(spec=spec, index=index, subsets=stats, prior_loss_weight=plan.prior_loss_weight,
                  max_train_steps=plan.max_train_steps)
    ds = PreparedDataset(records=train, warnings=warnings, **common)
    _balance(ds)
    ds.buckets = assign_buckets(spec, ds.records)
    ds.tag_frequency = _tag_frequency(stats, records)
    if not val:
        return ds, None
    vds = PreparedDataset(records=val, is_validation=True, **common)
    vds.num_train_images = len(val)
    vds.buckets = assign_buckets(spec, vds.records)
    return ds, vds


class PreparedData:
    """Everything the pre-pass found, for all datasets of a plan.

    Attributes:
        plan: the declaration it came from.
        train: prepared training datasets (one per plan dataset).
        validation: validation twins (possibly empty).
        warnings: every warning of plan and scan, in order.
    """

    def __init__(self, plan: DatasetPlan, train: list, validation: list, warnings: list[str]):
        self.plan = plan
        self.train = train
        self.validation = validation
        self.warnings = warnings

    @property
    def num_train_images(self) -> int:
        """Training samples with repeats, regularization excluded (``ss_num_train_images``)."""
        return sum(ds.num_train_images for ds in self.train)

    @property
    def num_reg_images(self) -> int:
        """Regularization samples with repeats before balancing (``ss_num_reg_images``)."""
        return sum(ds.num_reg_images for ds in self.train)

    @property
    def num_validation_images(self) -> int:
        """Validation images (``ss_num_validation_images``)."""
        return sum(len(ds.records) for ds in self.validation)

    @property
    def tag_frequency(self) -> dict:
        """``{dir_name: {tag: count}}`` merged over datasets; a folder is counted once."""
        merged: dict = {}
        for ds in self.train:
            for name, freq in ds.tag_frequency.items():
                merged.setdefault(name, freq)
        return merged

    def report(self) -> dict:
        """The dataset report of DATASET.md §11 as a JSON-ready dict."""
        from library.dataset.report import build_report

        return build_report(self)

    def format_report(self) -> str:
        """The report as human-readable text (printed at the start of training)."""
        from library.dataset.report import format_report

        return format_report(self.report())

    def metadata_fields(self, from_config: bool | None = None) -> dict:
        """The ss_* dataset entries (FORMAT.md §4) as Python values (the caller str()s them)."""
        from library.dataset.report import metadata_fields

        if from_config is None:
            from_config = self.plan.mode == "config"
        return metadata_fields(self, from_config)


def prepare(plan: DatasetPlan, *, seed: int, bucket_step_multiple: int,
            is_sdxl: bool | None = None, latents_cached: bool = False) -> PreparedData:
    """Scan, check, split, balance and bucket every dataset of ``plan`` (no model needed).

    Args:
        plan: from ``build_plan``.
        seed: the run seed (validation split fallback seed).
        bucket_step_multiple: 32 for SDXL, 64 for SD1/2.
        is_sdxl: accepted from older callers and ignored: nothing in the pre-pass depends on the family
            beyond ``bucket_step_multiple`` (cache file names take the family's tag in ``cache_latents``).
        latents_cached: latents will be cached (images are then resized to fit, even without bucketing).

    Raises:
        UserError: a bad image, caption file, bucket setting or an empty dataset.
    """
    train, validation, warnings = [], [], list(plan.warnings)
    for i, spec in enumerate(plan.datasets):
        try:
            ds, vds = prepare_dataset(spec, i, plan, seed, bucket_step_multiple, latents_cached)
        except UserError as err:  # "datasets[i]: ..." also names the dataset TOML it came from
            if plan.mode != "config" or not str(err).startswith("datasets["):
                raise
            raise UserError(f"{plan.source} {err}", err.exit_code) from None
        train.append(ds)
        warnings += ds.warnings
        if vds is not None:
            validation.append(vds)
    return PreparedData(plan, train, validation, warnings)
