"""The dataset report (DATASET.md §11) and the ss_* dataset metadata (FORMAT.md §4).

Both come from the same numbers, so the report and the saved metadata cannot disagree.
"""

from __future__ import annotations

import json
import math
import os

from library.dataset.buckets import crop_ltrb, crop_top_left, num_batches, trim_offsets


def image_entry(rec) -> dict:
    """Per-image report entry; ``crop_ltrb`` is the box kept from the resized image (centred)."""
    left, top = trim_offsets(rec.resized, rec.bucket)
    return {"path": rec.path, "bucket": list(rec.bucket), "resized": list(rec.resized),
            "crop_ltrb": [left, top, left + rec.bucket[0], top + rec.bucket[1]],
            "original_size": list(rec.size),
            "crop_top_left": list(crop_top_left(rec.bucket, crop_ltrb(rec.bucket, rec.size),
                                                False))}


def bucket_entries(ds) -> list[dict]:
    """Per bucket: resolution, samples, batches, trim and upscale statistics."""
    out = []
    for reso, samples in ds.buckets:
        recs = [ds.records[i] for i in sorted({i for i, _ in samples})]
        trims = [1 - reso[0] * reso[1] / (r.resized[0] * r.resized[1]) for r in recs]
        ups = [r.resized[0] / r.size[0] for r in recs]
        out.append({"resolution": list(reso), "count": len(samples), "images": len(recs),
                    "batches": math.ceil(len(samples) / ds.batch_size),
                    "smaller_than_batch": len(samples) < ds.batch_size,
                    "mean_trim": sum(trims) / len(trims), "max_trim": max(trims),
                    "upscaled": sum(u > 1 for u in ups), "max_upscale": max(ups)})
    return out


def mean_ar_error(ds) -> float:
    """Mean absolute aspect-ratio error over images (no repeats), as kohya's bucket_info."""
    errors = [abs(r.ar_error) for r in ds.records]
    return sum(errors) / len(errors) if errors else 0.0


def _subset_entry(stats) -> dict:
    sub = stats.spec
    return {"image_dir": sub.image_dir, "metadata_file": sub.metadata_file, "kind": sub.kind,
            "is_reg": sub.is_reg, "class_tokens": sub.class_tokens, "img_count": stats.img_count, "num_repeats": sub.num_repeats,
            "captions_found": stats.img_count - stats.captions_missing,
            "captions_missing": stats.captions_missing, "empty_captions": stats.empty_captions,
            "caption_files_without_image": stats.orphan_captions, "duplicate": stats.duplicate}


def dataset_entry(ds) -> dict:
    """Report entry of one prepared dataset."""
    spec = ds.spec
    batches = num_batches([len(s) for _, s in ds.buckets], ds.batch_size)
    return {"index": ds.index, "kind": spec.kind, "is_validation": ds.is_validation,
            "resolution": list(spec.resolution), "batch_size": spec.batch_size,
            "enable_bucket": spec.enable_bucket, "min_bucket_reso": spec.min_bucket_reso,
            "max_bucket_reso": spec.max_bucket_reso, "bucket_reso_steps": spec.bucket_reso_steps,
            "bucket_no_upscale": spec.bucket_no_upscale, "num_images": len(ds.records),
            "num_samples": ds.num_samples(), "num_train_images": ds.num_train_images,
            "num_reg_images": ds.num_reg_images,
            "reg_samples": sum(r.num_repeats for r in ds.records if r.is_reg),
            "batches": batches, "mean_img_ar_error": mean_ar_error(ds),
            "subsets": [_subset_entry(s) for s in ds.subsets],
            "buckets": bucket_entries(ds), "images": [image_entry(r) for r in ds.records]}


def build_report(data) -> dict:
    """The whole report: datasets, validation twins, step arithmetic (P = A = 1), warnings."""
    train = [dataset_entry(ds) for ds in data.train]
    batches = sum(d["batches"] for d in train)
    warnings = list(data.warnings)
    for d in train:
        warnings += [f"datasets[{d['index']}]: bucket {tuple(b['resolution'])} has {b['count']} "
                     f"samples, fewer than batch_size {d['batch_size']}"
                     for b in d["buckets"] if b["smaller_than_batch"]]
    return {"datasets": train, "validation": [dataset_entry(ds) for ds in data.validation],
            "num_train_images": data.num_train_images, "num_reg_images": data.num_reg_images,
            "num_validation_images": data.num_validation_images,
            "batches_per_epoch": batches, "steps_per_epoch": batches,
            "tag_frequency": data.tag_frequency, "warnings": warnings}


def format_report(report: dict) -> str:
    """Human-readable lines for the log."""
    lines = []
    for d in report["datasets"] + report["validation"]:
        tag = "validation" if d["is_validation"] else "dataset"
        lines.append(f"{tag} {d['index']} ({d['kind']}): resolution {tuple(d['resolution'])}, "
                     f"batch {d['batch_size']}, {d['num_images']} images, "
                     f"{d['num_samples']} samples, {d['batches']} batches")
        for s in d["subsets"]:
            lines.append(f"  subset {s['image_dir'] or s['metadata_file']}: {s['img_count']} "
                         f"images x {s['num_repeats']}{' (reg)' if s['is_reg'] else ''}, "
                         f"captions found {s['captions_found']}, missing {s['captions_missing']}")
        for b in d["buckets"]:
            small = " (smaller than batch size)" if b["smaller_than_batch"] else ""
            lines.append(f"  bucket {tuple(b['resolution'])}: {b['count']} samples, "
                         f"{b['batches']} batches, trimmed max {b['max_trim']:.1%}, upscaled "
                         f"{b['upscaled']} (max x{b['max_upscale']:.2f}){small}")
    lines.append(f"steps per epoch (1 process, no accumulation): {report['steps_per_epoch']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def bucket_info(ds) -> dict:
    """kohya's ``bucket_info``: ``{"buckets": {i: {"resolution", "count"}}, "mean_img_ar_error"}``."""
    return {"buckets": {i: {"resolution": list(reso), "count": len(samples)}
                        for i, (reso, samples) in enumerate(ds.buckets)},
            "mean_img_ar_error": mean_ar_error(ds)}


def _unique(name: str, taken: dict) -> str:
    value, i = name, 2
    while value in taken:
        value, i = f"{name} ({i})", i + 1
    return value


def _subset_meta(stats, is_db: bool) -> dict:
    sub = stats.spec
    meta = {"img_count": stats.img_count, "num_repeats": sub.num_repeats}
    for key in ("color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens",
                "keep_tokens_separator", "secondary_separator", "enable_wildcard",
                "caption_prefix", "caption_suffix", "resize_interpolation"):
        meta[key] = getattr(sub, key)
    meta["image_dir"] = os.path.basename(sub.image_dir) if sub.image_dir else None
    if is_db:
        meta["class_tokens"] = sub.class_tokens
        meta["is_reg"] = sub.is_reg
    else:
        meta["metadata_file"] = os.path.basename(sub.metadata_file)
    return meta


def _dirs(data) -> tuple[dict, dict]:
    dirs, reg_dirs = {}, {}
    for ds in data.train:
        for st in ds.subsets:
            if st.duplicate:
                continue
            sub = st.spec
            name = os.path.basename(sub.metadata_file if sub.kind == "FT" else sub.image_dir)
            target = reg_dirs if sub.is_reg else dirs
            target[_unique(name, target)] = {"n_repeats": sub.num_repeats,
                                             "img_count": st.img_count}
    return dirs, reg_dirs


def _datasets_meta(data) -> list[dict]:
    out = []
    for ds in data.train:
        spec, is_db = ds.spec, ds.spec.kind != "FT"
        out.append({"is_dreambooth": is_db, "batch_size_per_device": spec.batch_size,
                    "num_train_images": ds.num_train_images, "num_reg_images": ds.num_reg_images,
                    "resolution": list(spec.resolution), "enable_bucket": spec.enable_bucket,
                    "min_bucket_reso": spec.min_bucket_reso,
                    "max_bucket_reso": spec.max_bucket_reso, "tag_frequency": ds.tag_frequency,
                    "bucket_info": bucket_info(ds),
                    "resize_interpolation": spec.resize_interpolation,
                    "subsets": [_subset_meta(s, is_db) for s in ds.subsets if not s.duplicate]})
    return out


def metadata_fields(data, from_config: bool) -> dict:
    """The dataset part of the ss_* metadata.

    JSON-valued keys (``ss_datasets``, ``ss_tag_frequency``, ``ss_dataset_dirs``,
    ``ss_reg_dataset_dirs``, ``ss_bucket_info``) are already ``json.dumps`` strings; the other
    values are Python values the caller passes through ``str()``.
    """
    dirs, reg_dirs = _dirs(data)
    batches = sum(num_batches([len(s) for _, s in ds.buckets], ds.batch_size) for ds in data.train)
    out = {"ss_num_train_images": data.num_train_images, "ss_num_reg_images": data.num_reg_images,
           "ss_num_validation_images": data.num_validation_images,
           "ss_num_batches_per_epoch": batches,
           "ss_tag_frequency": json.dumps(data.tag_frequency),
           "ss_dataset_dirs": json.dumps(dirs)}
    if from_config:
        out["ss_datasets"] = json.dumps(_datasets_meta(data))
        return out
    ds = data.train[0]
    spec, sub = ds.spec, ds.subsets[0].spec
    out.update({"ss_batch_size_per_device": spec.batch_size, "ss_resolution": tuple(spec.resolution),
                "ss_color_aug": sub.color_aug, "ss_flip_aug": sub.flip_aug,
                "ss_random_crop": sub.random_crop, "ss_shuffle_caption": sub.shuffle_caption,
                "ss_enable_bucket": spec.enable_bucket,
                "ss_bucket_no_upscale": spec.bucket_no_upscale,
                "ss_min_bucket_reso": spec.min_bucket_reso,
                "ss_max_bucket_reso": spec.max_bucket_reso, "ss_keep_tokens": sub.keep_tokens,
                "ss_reg_dataset_dirs": json.dumps(reg_dirs),
                "ss_bucket_info": json.dumps(bucket_info(ds))})
    return out
