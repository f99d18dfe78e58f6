"""Image loading, mode conversion, resize + trim, flip, colour and face-crop augmentation.

Arrays are ``(H, W, C)`` uint8 (C = 3, or 4 with alpha) until :func:`to_tensor`, which returns
``(3, H, W)`` float in [-1, 1].
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch
from PIL import Image

from library.dataset.buckets import crop_ltrb
from library.errors import UserError

PIL_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
}


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale ('I;16', 'I', 'F') to 8-bit 'L', scaling the full range."""
    arr = np.asarray(img).astype(np.float64)
    peak = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
    if img.mode == "F":
        peak = max(arr.max(initial=0), 1.0)
    return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def convert_mode(img: Image.Image, keep_alpha: bool) -> Image.Image:
    """Any Pillow mode to RGB, or RGBA when ``keep_alpha`` (missing alpha = opaque)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if keep_alpha:
        return img.convert("RGBA")
    if has_alpha and img.mode != "RGB":
        # kohya-compat: alpha is dropped (PIL convert), not composited on a background.
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(path: str, keep_alpha: bool = False) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3|4)`` uint8. EXIF orientation is not applied (kohya-compat).

    Raises:
        UserError: the file cannot be decoded (names the file).
    """
    try:
        with Image.open(path) as img:
            img.load()
            out = convert_mode(img, keep_alpha)
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode image ({exc}); delete or replace it") from None
    return np.asarray(out).copy()


def resize(arr: np.ndarray, size: tuple[int, int], interpolation: str | None) -> np.ndarray:
    """Resize to ``size = (w, h)``: the named filter, else cv2 INTER_AREA when shrinking both
    sides and PIL LANCZOS otherwise (kohya's default choice)."""
    h, w = arr.shape[:2]
    if (w, h) == tuple(size):
        return arr
    shrinking = size[0] < w and size[1] < h
    if interpolation == "area" or (interpolation is None and shrinking):
        return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    pil_filter = PIL_FILTERS[interpolation or "lanczos"]
    return np.array(Image.fromarray(arr).resize(size, pil_filter))


def trim(arr: np.ndarray, bucket: tuple[int, int], rng: random.Random | None = None):
    """Trim the excess of each axis to ``bucket = (w, h)``; centred, or random when ``rng``.

    Returns:
        ``(array, (left, top))`` with the offsets actually applied.
    """
    h, w = arr.shape[:2]
    left = top = 0
    if w > bucket[0]:
        left = rng.randint(0, w - bucket[0]) if rng else (w - bucket[0]) // 2
        arr = arr[:, left:left + bucket[0]]
    if h > bucket[1]:
        top = rng.randint(0, h - bucket[1]) if rng else (h - bucket[1]) // 2
        arr = arr[top:top + bucket[1]]
    return arr, (left, top)


def color_aug(arr: np.ndarray, rng: random.Random) -> np.ndarray:
    """Weak hue shift of up to ±8 (OpenCV hue units); alpha untouched."""
    rgb = np.ascontiguousarray(arr[..., :3])
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(rng.uniform(-8, 8)))) % 180
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return np.concatenate([out, arr[..., 3:]], axis=2) if arr.shape[2] == 4 else out


def face_crop(arr: np.ndarray, face: tuple[int, int, int, int], target: tuple[int, int],
              scale_range: tuple[float, float], rng: random.Random, random_crop: bool):
    """Scale around the face ``(cx, cy, w, h)`` and crop to ``target = (w, h)`` (kohya's
    ``crop_target``, used when bucketing is off)."""
    height, width = arr.shape[:2]
    if (width, height) == tuple(target):
        return arr
    cx, cy, fw, fh = face
    face_size = max(fw, fh)
    size = min(target)
    min_scale = max(target[1] / height, target[0] / width)
    min_scale = min(1.0, max(min_scale, size / (face_size * scale_range[1])))
    max_scale = min(1.0, max(min_scale, size / (face_size * scale_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    nh, nw = int(height * scale + 0.5), int(width * scale + 0.5)
    arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_AREA)
    centre = (int(cy * scale + 0.5), int(cx * scale + 0.5))
    for axis, (tsize, length, pos) in enumerate(zip((target[1], target[0]), (nh, nw), centre)):
        p1 = pos - tsize // 2
        if random_crop:
            span = max(length - pos, pos)
            p1 = p1 + rng.randint(0, span) + rng.randint(0, span) - span
        p1 = max(0, min(p1, length - tsize))
        arr = arr[p1:p1 + tsize] if axis == 0 else arr[:, p1:p1 + tsize]
    return arr


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3+)`` uint8 -> ``(3, H, W)`` float32 in [-1, 1] (alpha dropped)."""
    rgb = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float()
    return rgb / 127.5 - 1.0


def alpha_of(arr: np.ndarray) -> torch.Tensor:
    """``(H, W)`` float mask in [0, 1] from the alpha channel (ones without one)."""
    if arr.shape[2] < 4:
        return torch.ones(arr.shape[:2])
    return torch.from_numpy(np.ascontiguousarray(arr[..., 3])).float() / 255.0


def load_sample_array(spec, rec, sub, rng: random.Random | None, path: str | None = None,
                      resize_to_fit: bool = False):
    """Decode, resize and trim one image to its bucket.

    Args:
        spec: the dataset spec (bucketing on/off, resolution, interpolation).
        rec: the image record.
        sub: its subset spec (alpha, random_crop, face crop).
        rng: the sample generator for random crops (None: centred trim).
        path: decode this file instead (conditioning image), same geometry.
        resize_to_fit: without bucketing, resize to cover the resolution and trim the centre, as for
            bucketed data (kohya does so when it caches latents); otherwise such images must already fit.

    Returns:
        ``(array (H, W, C) uint8, original size (w, h), letterbox ltrb or None)``.
    """
    arr = load_image(path or rec.path, keep_alpha=sub.alpha_mask and path is None)
    interp = sub.resize_interpolation or spec.resize_interpolation
    if spec.enable_bucket or resize_to_fit:
        arr = resize(arr, rec.resized, interp)
        arr, _ = trim(arr, rec.bucket, rng if sub.random_crop else None)
        return arr, rec.size, crop_ltrb(rec.bucket, rec.size)
    width, height = spec.resolution
    if rec.face and sub.face_crop_aug_range and rng is not None:
        arr = face_crop(arr, rec.face, (width, height), sub.face_crop_aug_range, rng,
                           sub.random_crop)
    elif arr.shape[0] > height or arr.shape[1] > width:
        if not sub.random_crop or rng is None:
            raise UserError(f"{rec.path}: image too large, but cropping and bucketing are "
                            "disabled; enable_bucket or random_crop, or resize the image")
        arr, _ = trim(arr, (width, height), rng)
    if arr.shape[:2] != (height, width):
        raise UserError(f"{rec.path}: image is {arr.shape[1]}x{arr.shape[0]}, smaller than "
                        f"resolution {width}x{height}; enable_bucket or resize it")
    return arr, (arr.shape[1], arr.shape[0]), None
