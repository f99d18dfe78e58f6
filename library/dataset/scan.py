"""Image discovery, header checks, caption files and fine-tune metadata (DATASET.md §2.2, §4).

Only image headers are read here (no full decode), so the pre-pass is fast and runs before any
model is loaded.
"""

from __future__ import annotations

import json
import os
import warnings

from PIL import Image, UnidentifiedImageError

from library.errors import UserError

BASE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_extensions() -> tuple[str, ...]:
    """Supported extensions; ``.avif`` / ``.jxl`` only when Pillow can open them."""
    registered = Image.registered_extensions()
    extra = tuple(ext for ext in (".avif", ".jxl") if ext in registered)
    return BASE_EXTENSIONS + extra


def list_images(image_dir: str, key: str = "image_dir") -> list[str]:
    """Image files directly in ``image_dir`` (any case), de-duplicated, sorted by path string; ``key`` names
    the setting in the not-found error."""
    if not os.path.isdir(image_dir):
        raise UserError(f"{image_dir}: {key} not found")
    exts = image_extensions()
    found = {os.path.join(image_dir, name) for name in os.listdir(image_dir)
             if name.lower().endswith(exts) and os.path.isfile(os.path.join(image_dir, name))}
    return sorted(found)


def _jpeg_truncated(path: str) -> bool:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 4096))
        return b"\xff\xd9" not in fh.read()


def check_image(path: str) -> tuple[int, int]:
    """Read the header and verify the file without decoding pixels; return ``(w, h)``.

    Raises:
        UserError: zero-byte, unreadable, truncated or corrupt file, or one over Pillow's
            decompression-bomb limit.
    """
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: image file is empty (0 bytes); delete or replace it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
                fmt = img.format
                img.verify()
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path}: image too large ({exc}); resize it or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: corrupt or unreadable image ({exc}); delete or replace it") from None
    if fmt == "JPEG" and _jpeg_truncated(path):  # sd-train: verify() does not see truncation
        raise UserError(f"{path}: truncated JPEG (no end-of-image marker); delete or replace it")
    return size


def caption_candidates(image_path: str, caption_extension: str) -> list[str]:
    """Caption file names to try: ``stem{ext}``, then the face-crop stem without 4 ``_`` parts."""
    base, stem = os.path.split(os.path.splitext(image_path)[0])
    names = [os.path.join(base, stem + caption_extension)]
    parts = stem.split("_")
    if len(parts) >= 5:
        names.append(os.path.join(base, "_".join(parts[:-4]) + caption_extension))
    return names


def read_caption_file(path: str, enable_wildcard: bool) -> str:
    """First stripped line, or with wildcards all non-empty stripped lines joined by ``\\n``."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: caption file is not valid UTF-8; re-save it as UTF-8") from None
    if not lines:
        raise UserError(f"{path}: caption file is empty; write a caption or delete the file")
    if enable_wildcard:
        return "\n".join(line.strip() for line in lines if line.strip())
    return lines[0].strip()


def find_caption(image_path: str, caption_extension: str, enable_wildcard: bool) -> str | None:
    """The caption from the first existing caption file, or None when there is none."""
    for name in caption_candidates(image_path, caption_extension):
        if os.path.isfile(name):
            return read_caption_file(name, enable_wildcard)
    return None


def face_info(image_path: str) -> tuple[int, int, int, int] | None:
    """``(cx, cy, w, h)`` from a face-crop name ``name_cx_cy_w_h``, else None."""
    parts = os.path.splitext(os.path.basename(image_path))[0].split("_")
    if len(parts) < 5:
        return None
    try:
        return tuple(int(p) for p in parts[-4:])
    except ValueError:
        return None


def _join_caption(caption: str, tags: str, separator: str, enable_wildcard: bool) -> str:
    if enable_wildcard and tags:
        tags = tags.replace("\n", separator)
        lines = [line for line in caption.split("\n") if line.strip()]
        if lines:
            return "\n".join(line + separator + tags for line in lines)
    if caption and tags:
        return caption + separator + tags
    return caption or tags or ""


HF_FILE_KEY, HF_CAPTION_KEY = "file_name", "text"  # Hugging Face image-folder metadata.jsonl columns


def load_metadata(path: str, image_dir: str | None, separator: str,
                  enable_wildcard: bool) -> list[dict]:
    """Read a fine-tune ``.json`` / ``.jsonl`` file into ``[{"path", "caption", "tags", "size"}]``.

    ``size`` is ``(w, h)`` or None; relative keys are joined to ``image_dir`` (then required). A ``.jsonl``
    line names its image with ``image_path`` (kohya) or ``file_name`` (Hugging Face image folders, whose
    ``metadata.jsonl`` has the caption in ``text``; relative to the file's folder when there is no ``image_dir``).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            if path.lower().endswith(".jsonl"):
                rows = [json.loads(line) for line in fh if line.strip()]
                entries = [(r.get("image_path") or r.get(HF_FILE_KEY), r) for r in rows]
            else:
                entries = list(json.load(fh).items())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read metadata file: {exc}") from None
    out = []
    for key, info in entries:
        if not key:
            raise UserError(f"{path}: a jsonl line has neither image_path nor {HF_FILE_KEY}")
        if not os.path.isabs(key):
            base = image_dir or (os.path.dirname(os.path.abspath(path)) if HF_FILE_KEY in info else None)
            if not base:
                raise UserError(f"{path}: image key '{key}' is relative; set image_dir "
                                "(or --train_data_dir)")
            key = os.path.join(base, key)
        caption = info.get("caption") or info.get(HF_CAPTION_KEY) or ""
        tags = info.get("tags") or ""
        size = info.get("image_size")
        out.append({"path": key, "caption": _join_caption(caption, tags, separator,
                                                          enable_wildcard),
                    "tags": tags, "size": tuple(size) if size else None})
    return out


def resolve_image_path(path: str) -> str:
    """A metadata key may omit the extension (kohya): try the supported ones."""
    if os.path.isfile(path):
        return path
    for ext in image_extensions():  # kohya-compat: extension-less metadata keys
        for cand in (path + ext, path + ext.upper()):
            if os.path.isfile(cand):
                return cand
    raise UserError(f"{path}: image listed in the metadata file not found")


def load_cache_info(image_dir: str) -> dict:
    """``metadata_cache.json`` of a folder (``cache_info``), or {} when absent/unreadable."""
    path = os.path.join(image_dir, "metadata_cache.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def save_cache_info(image_dir: str, records: dict) -> None:
    """Write ``{path: {"caption", "resolution": [w, h]}}`` to the folder's metadata_cache.json."""
    path = os.path.join(image_dir, "metadata_cache.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(records, fh)
    os.replace(tmp, path)
