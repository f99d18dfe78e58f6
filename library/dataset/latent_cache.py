"""Latent and text-encoder-output caches: kohya's ``.npz`` names and keys (DATASET.md §10).

Latents are stored **unscaled** ``(4, h/8, w/8)`` float32; the caller applies the VAE scale.
Each file also holds ``sd_train_fingerprint_{h}x{w}`` (bucket, resize, image file size, VAE id)
so a changed image, bucket or VAE re-encodes. Files written by kohya (no fingerprint) are
accepted when their shapes match.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from library.dataset.buckets import crop_ltrb
from library.dataset.images import alpha_of, load_sample_array, to_tensor
from library.errors import UserError


def latent_npz_path(image_path: str, size: tuple[int, int], family_tag: str) -> str:
    """``{stem}_{W:04d}x{H:04d}_{sd|sdxl}.npz`` next to the image (original size W x H)."""
    stem = os.path.splitext(image_path)[0]
    return f"{stem}_{size[0]:04d}x{size[1]:04d}_{family_tag}.npz"


def te_npz_path(image_path: str) -> str:
    """``{stem}_te_outputs.npz`` next to the image."""
    return os.path.splitext(image_path)[0] + "_te_outputs.npz"


def fingerprint(rec, vae_fingerprint: str) -> str:
    """Short hash of what the latent depends on besides the file name."""
    size = os.path.getsize(rec.path) if os.path.exists(rec.path) else -1
    text = json.dumps([list(rec.bucket), list(rec.resized), list(rec.size), size, vae_fingerprint])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _suffix(bucket: tuple[int, int]) -> str:
    return f"_{bucket[1] // 8}x{bucket[0] // 8}"


def _read_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _pick(data: dict, key: str, suffix: str):
    return data.get(key + suffix, data.get(key))


def npz_is_valid(path: str, rec, *, flip: bool, alpha: bool, fp: str, skip_check: bool) -> bool:
    """True when ``path`` holds what this record needs (existence only with ``skip_check``)."""
    if not os.path.exists(path):
        return False
    if skip_check:
        return True
    try:
        data = _read_npz(path)
    except (OSError, ValueError):
        return False
    sfx = _suffix(rec.bucket)
    shape = (rec.bucket[1] // 8, rec.bucket[0] // 8)
    latents = _pick(data, "latents", sfx)
    if latents is None or tuple(latents.shape[-2:]) != shape:
        return False
    if flip and _pick(data, "latents_flipped", sfx) is None:
        return False
    if alpha and _pick(data, "alpha_mask", sfx) is None:
        return False
    stored = data.get("sd_train_fingerprint" + sfx)
    return stored is None or str(stored) == fp


def write_npz(path: str, values: dict) -> None:
    """Atomically (re)write ``path`` keeping keys already there."""
    data = {}
    if os.path.exists(path):
        try:
            data = _read_npz(path)
        except (OSError, ValueError):
            data = {}
    data.update(values)
    tmp = path[:-4] + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)


def load_record_latents(rec):
    """``(latents, latents_flipped, alpha_mask, original_size, crop_ltrb)`` of a cached record."""
    ltrb = crop_ltrb(rec.bucket, rec.size)
    if rec.latents is not None:
        return rec.latents, rec.latents_flipped, rec.cached_alpha, rec.size, ltrb
    data = _read_npz(rec.npz_path)
    sfx = _suffix(rec.bucket)

    def get(key):
        value = _pick(data, key, sfx)
        return None if value is None else torch.from_numpy(np.asarray(value, dtype=np.float32))

    return get("latents"), get("latents_flipped"), get("alpha_mask"), rec.size, ltrb


def _check_cacheable(dataset) -> None:
    for ds in dataset.datasets:
        for st in ds.subsets:
            for flag in ("random_crop", "color_aug"):
                if getattr(st.spec, flag):
                    raise UserError(f"datasets[{ds.index}]: {flag} cannot be combined with "
                                    "latent caching; turn one of them off")


def _encode_checked(encode_fn, images: torch.Tensor, recs) -> torch.Tensor:
    with torch.no_grad():
        latents = encode_fn(images).float().cpu()
    for lat, rec in zip(latents, recs):
        if not torch.isfinite(lat).all():
            raise UserError(f"{rec.path}: the VAE produced NaN/Inf latents; use --no_half_vae "
                            "(fp32 VAE) or check the image")
    return latents


def _encode_batch(ds, recs, encode_fn, flip: bool):
    # kohya-compat: caching resizes to cover the bucket and trims, with or without bucketing
    arrays = [load_sample_array(ds.spec, r, ds.subsets[r.subset].spec, None, resize_to_fit=True)[0] for r in recs]
    images = torch.stack([to_tensor(a) for a in arrays])
    latents = _encode_checked(encode_fn, images, recs)
    flipped = _encode_checked(encode_fn, images.flip(-1), recs) if flip else [None] * len(recs)
    alphas = [alpha_of(a) for a in arrays]
    return latents, flipped, alphas


def _store(rec, lat, lat_f, alpha, *, to_disk: bool, want_alpha: bool, fp: str) -> None:
    if not to_disk:
        rec.latents, rec.latents_flipped = lat, lat_f
        rec.cached_alpha = alpha if want_alpha else None
        return
    sfx = _suffix(rec.bucket)
    # kohya-compat: plain keys for old readers plus the multi-resolution latents_{h}x{w} keys.
    values = {"latents": lat.numpy(), "latents" + sfx: lat.numpy(),
              "original_size": np.array(rec.size), "crop_ltrb": np.array(crop_ltrb(rec.bucket,
                                                                                    rec.size)),
              "sd_train_fingerprint" + sfx: np.array(fp)}
    if lat_f is not None:
        values["latents_flipped"] = values["latents_flipped" + sfx] = lat_f.numpy()
    if want_alpha:
        values["alpha_mask"] = values["alpha_mask" + sfx] = alpha.numpy()
    write_npz(rec.npz_path, values)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled)


def cache_latents(dataset, encode_fn, *, batch_size: int, to_disk: bool, skip_check: bool = False,
                  family_tag: str | None = None, flip_aug_aware: bool = True,
                  vae_fingerprint: str = "", progress: bool = True) -> int:
    """Encode every image of ``dataset`` once; afterwards ``__getitem__`` returns latents.

    Args:
        dataset: a :class:`BucketBatchDataset`.
        encode_fn: ``images (B, 3, H, W) float in [-1, 1] -> latents (B, 4, H/8, W/8)``, a VAE
            ``sample()`` without the scale factor.
        batch_size: images per ``encode_fn`` call (``--vae_batch_size``), one bucket per call.
        to_disk: write/reuse ``.npz`` files next to the images.
        skip_check: trust existing files (existence only).
        family_tag: the family's cache tag in the file name (``FamilySpec.latent_cache_tag``: ``sd``, ``sdxl``);
            needed with ``to_disk``.
        flip_aug_aware: also encode flipped images for ``flip_aug`` subsets.
        vae_fingerprint: identifies the VAE (e.g. its hash) so a new VAE re-encodes.
        progress: show a tqdm bar.

    Returns:
        The number of images encoded (0 when every disk cache was reused).
    """
    _check_cacheable(dataset)
    if to_disk and not family_tag:
        raise ValueError("cache_latents(to_disk=True) needs the family's family_tag for the file names")
    todo = []
    for ds in dataset.datasets:
        for rec in ds.records:
            sub = ds.subsets[rec.subset].spec
            flip, alpha = flip_aug_aware and sub.flip_aug, sub.alpha_mask
            fp = fingerprint(rec, vae_fingerprint)
            if to_disk:
                rec.npz_path = latent_npz_path(rec.path, rec.size, family_tag)
                legacy = os.path.splitext(rec.path)[0] + ".npz"  # kohya-compat: old name
                if not os.path.exists(rec.npz_path) and npz_is_valid(
                        legacy, rec, flip=flip, alpha=alpha, fp=fp, skip_check=skip_check):
                    rec.npz_path = legacy
                    continue
                if npz_is_valid(rec.npz_path, rec, flip=flip, alpha=alpha, fp=fp,
                                skip_check=skip_check):
                    continue
            todo.append((ds, rec, flip, alpha, fp))
    todo.sort(key=lambda t: (t[1].bucket, t[0].index, t[0].is_validation))
    bar = _progress(len(todo), "caching latents", progress)
    i = 0
    while i < len(todo):
        head = todo[i]
        j = i
        while (j < len(todo) and j - i < batch_size and todo[j][1].bucket == head[1].bucket
               and todo[j][0] is head[0]):
            j += 1
        group = todo[i:j]
        flip = any(t[2] for t in group)
        latents, flipped, alphas = _encode_batch(head[0], [t[1] for t in group], encode_fn, flip)
        for (_, rec, want_flip, want_alpha, fp), lat, lat_f, alpha in zip(group, latents, flipped,
                                                                          alphas):
            _store(rec, lat, lat_f if want_flip else None, alpha, to_disk=to_disk,
                   want_alpha=want_alpha, fp=fp)
        bar.update(len(group))
        i += len(group)
    bar.close()
    dataset.latents_cached = True
    return len(todo)


def caption_randomness(dataset) -> list[tuple[str, list[str]]]:
    """``(image_dir, [caption options that vary the caption between fetches])`` of each subset that has any."""
    found = []
    for ds in dataset.datasets:
        for st in ds.subsets:
            used = st.caption_options.random_settings()
            if used:
                found.append((st.spec.image_dir or st.spec.metadata_file, used))
    return found


def _check_frozen_captions(dataset) -> None:
    randomness = caption_randomness(dataset)
    if randomness:
        where, used = randomness[0]
        raise UserError(f"{where}: --cache_text_encoder_outputs would freeze the caption "
                        f"randomness of {', '.join(used)}; turn those off or do not "
                        "cache text-encoder outputs")


def _caption_key(caption: str, variant: str = "") -> np.ndarray:
    """Cache key of a caption; a non-empty ``variant`` (e.g. ``"weighted"``) gives a different key."""
    text = caption if not variant else f"{caption}\x00{variant}"
    return np.array(hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])


def _load_te(path: str, caption: str, variant: str = ""):
    try:
        data = _read_npz(path)
    except (OSError, ValueError):
        return None
    keys = ("hidden_state1", "hidden_state2", "pool2")
    if any(k not in data for k in keys):
        return None
    stored = data.get("sd_train_caption_sha1")
    if stored is not None and str(stored) != str(_caption_key(caption, variant)):
        return None
    return tuple(torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in keys)


def cache_text_encoder_outputs(dataset, encode_fn, *, batch_size: int, to_disk: bool,
                               progress: bool = True, variant: str = "") -> int:
    """Encode every raw caption once (SDXL); batches then carry ``text_encoder_outputs``.

    Args:
        dataset: a :class:`BucketBatchDataset`.
        encode_fn: ``captions list[str] -> (hidden1 (B, 77, D1), hidden2 (B, 77, D2),
            pool2 (B, P))`` tensors.
        batch_size: captions per call.
        to_disk: write/reuse ``{stem}_te_outputs.npz`` (keys hidden_state1, hidden_state2, pool2).
        progress: show a tqdm bar.
        variant: how the captions were encoded beyond their text (``"weighted"`` under
            ``--weighted_captions``); part of the disk cache key, so a cache written in another mode is redone.

    Returns:
        The number of captions encoded.

    Raises:
        UserError: a subset uses caption randomness that caching would freeze.
    """
    _check_frozen_captions(dataset)
    todo = []
    for ds in dataset.datasets:
        for rec in ds.records:
            cached = _load_te(te_npz_path(rec.path), rec.caption, variant) if to_disk else None
            if cached is not None and os.path.exists(te_npz_path(rec.path)):
                rec.te_outputs = cached
            else:
                todo.append(rec)
    bar = _progress(len(todo), "caching text encoder outputs", progress)
    for i in range(0, len(todo), batch_size):
        recs = todo[i:i + batch_size]
        with torch.no_grad():
            outs = [t.float().cpu() for t in encode_fn([r.caption for r in recs])]
        for j, rec in enumerate(recs):
            rec.te_outputs = tuple(t[j] for t in outs)
            if to_disk:
                write_npz(te_npz_path(rec.path), {
                    "hidden_state1": outs[0][j].numpy(), "hidden_state2": outs[1][j].numpy(),
                    "pool2": outs[2][j].numpy(), "sd_train_caption_sha1": _caption_key(rec.caption, variant)})
        bar.update(len(recs))
    bar.close()
    dataset.te_cached = True
    return len(todo)
