"""Resize and crop images for training: ``prepare_images SRC DST``.

``--crop center|focus`` writes every image at the exact size of the bucket the trainer assigns it
(the trainer's bucket code with the same flags: ``--resolution``, ``--enable_bucket``,
``--min_bucket_reso``, ``--max_bucket_reso``, ``--bucket_reso_steps``, ``--bucket_no_upscale``), so
training neither resizes nor trims it again. ``center`` is the trainer's own centred trim; ``focus``
centres the window on the faces (OpenCV's Haar cascade), else on the salient region, else the centre.
``--crop none`` only shrinks to at most the resolution's area (kohya's ``resize_images_to_resolution.py``:
``--max_resolution``, ``--divisible_by``, ``--interpolation``, ``--save_as_png``). Caption and other
files with the same stem are copied next to each image; subfolders are kept with ``--recursive``.
``--debug`` also writes ``DST_crop_boxes.png``, the crop boxes drawn on a contact sheet.

Example: ``prepare_images raw "train/10_sks woman" --crop focus --resolution 1024 --enable_bucket``
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from library.dataset import scan
from library.dataset.config import parse_resolution
from library.dataset.images import PIL_FILTERS, load_image
from library.errors import UserError, run_cli
from library.io.safetensors_io import atomic_path
from library.prep import crop, files, focus, sheet

FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}


def setup_parser() -> argparse.ArgumentParser:
    """Flags of ``prepare_images`` (bucket flags as in training, kohya's resize-tool flags as aliases)."""
    p = argparse.ArgumentParser(prog="prepare_images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src_img_folder", help="folder with the raw images")
    p.add_argument("dst_img_folder", help="output folder (created)")
    p.add_argument("--crop", choices=["center", "focus", "none"], default="center", help="crop mode (default center)")
    p.add_argument("--resolution", default="512", help="training resolution 'SIZE' or 'W,H' (default 512)")
    p.add_argument("--enable_bucket", action="store_true", help="aspect-ratio buckets, as in training")
    p.add_argument("--min_bucket_reso", type=int, default=256, help="smallest bucket side (default 256)")
    p.add_argument("--max_bucket_reso", type=int, default=1024, help="largest bucket side (default 1024)")
    p.add_argument("--bucket_reso_steps", type=int, default=64, help="bucket side granularity (default 64)")
    p.add_argument("--bucket_no_upscale", action="store_true", help="one bucket per image size, never upscale")
    p.add_argument("--sdxl", action="store_true", help="SDXL rules: bucket steps may be multiples of 32")
    p.add_argument("--max_resolution", default=None, help="--crop none: largest area as 'WxH' (kohya's flag)")
    p.add_argument("--divisible_by", type=int, default=1, help="--crop none: trim sides to multiples of this")
    p.add_argument("--interpolation", "--resize_interpolation", dest="interpolation", default=None,
                   choices=sorted([*PIL_FILTERS, "area", "lanczos4"]),
                   help="resize filter (default: area when shrinking, lanczos when enlarging, as training)")
    p.add_argument("--min_size", type=int, default=0, help="skip images whose shorter side is below this")
    p.add_argument("--max_size", type=int, default=0, help="skip images whose longer side is above this (0: none)")
    p.add_argument("--output_format", choices=sorted(FORMATS), default="png", help="image format (default png)")
    p.add_argument("--save_as_png", action="store_true", help="same as --output_format png (kohya's flag)")
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality (default 95)")
    p.add_argument("--copy_associated_files", action="store_true", help="accepted: same-stem files are always copied")
    p.add_argument("--face_model", default=None,
                   help="face detector for --crop focus: Haar .xml or YuNet .onnx (default: OpenCV's bundled cascade)")
    p.add_argument("--recursive", action="store_true", help="also process subfolders (kept in DST)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--debug", action="store_true", help="write DST_crop_boxes.png; show tracebacks")
    return p


def make_plans(args: argparse.Namespace, sizes: dict) -> list[crop.CropPlan]:
    """The crop plan of every image that passes the size filters (bucket flags checked as in training)."""
    try:
        res = parse_resolution(args.resolution)
    except ValueError:
        res = None
    if res is None or min(res) < 1:
        raise UserError(f"--resolution {args.resolution}: use 'SIZE' or 'WIDTH,HEIGHT'")
    if args.crop == "none":
        area = res[0] * res[1]
        if args.max_resolution:
            w, _, h = args.max_resolution.lower().partition("x")
            if not (w.strip().isdigit() and h.strip().isdigit()):
                raise UserError(f"--max_resolution {args.max_resolution}: use one 'WIDTHxHEIGHT' such as 512x512")
            area = int(w) * int(h)
        if args.divisible_by < 1:
            raise UserError(f"--divisible_by {args.divisible_by}: must be at least 1")
        return [crop.area_limited(p, s, area, args.divisible_by) for p, s in sizes.items()]
    if args.max_resolution:
        raise UserError("--max_resolution belongs to --crop none; with --crop center/focus use --resolution")
    spec, warnings = crop.bucket_spec(res, args.enable_bucket, args.min_bucket_reso, args.max_bucket_reso,
                                      args.bucket_reso_steps, args.bucket_no_upscale, 32 if args.sdxl else 64)
    for line in warnings:
        print(f"warning: {line.replace('datasets[0]', 'bucket flags')}")
    return crop.plan_buckets(spec, sizes)


def _filtered(args: argparse.Namespace, sizes: dict) -> tuple[dict, list[str]]:
    keep, skipped = {}, []
    for path, (w, h) in sizes.items():
        if min(w, h) < args.min_size:
            skipped.append(f"{path} ({w}x{h}: shorter side below --min_size {args.min_size})")
        elif args.max_size and max(w, h) > args.max_size:
            skipped.append(f"{path} ({w}x{h}: longer side above --max_size {args.max_size})")
        else:
            keep[path] = (w, h)
    return keep, skipped


def _companions(image: Path) -> list[Path]:
    """Same-stem files that travel with an image (captions, masks' text...), not images or latent caches."""
    exts = {e.lower() for e in (".npz", *scan.image_extensions())}
    return sorted(p for p in image.parent.glob(image.stem + ".*")
                  if p.stem == image.stem and p.is_file() and p.suffix.lower() not in exts)


def _outputs(args, plans, src: Path, dst: Path) -> list[tuple[crop.CropPlan, Path, list[tuple[Path, Path]]]]:
    fmt = FORMATS["png" if args.save_as_png else args.output_format]
    jobs, seen = [], {}
    for plan in plans:
        out = dst / plan.path.relative_to(src).with_suffix(fmt)
        if out in seen:
            raise UserError(f"{plan.path} and {seen[out]} would both be written to {out}; rename one of them")
        seen[out] = plan.path
        jobs.append((plan, out, [(c, out.with_suffix(c.suffix)) for c in _companions(plan.path)]))
    if not args.overwrite:
        files.existing_outputs([o for _, out, cs in jobs for o in (out, *(t for _, t in cs))],
                               "pass --overwrite to replace them or choose an empty DST")
    return jobs


def _write(arr, out: Path, quality: int) -> None:
    img = Image.fromarray(arr)
    if out.suffix == ".jpg" and img.mode == "RGBA":
        img = img.convert("RGB")
    with atomic_path(out) as tmp:
        img.save(tmp, quality=quality) if out.suffix in (".jpg", ".webp") else img.save(tmp)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def prepare(args: argparse.Namespace) -> tuple[Counter, list[str]]:
    """Check everything, then write every image and its companions; returns ``(bucket counts, skipped)``."""
    src, dst = Path(args.src_img_folder), Path(args.dst_img_folder)
    sizes, skipped = _filtered(args, files.check_images(files.list_images(src, args.recursive)))
    if not sizes:
        raise UserError(f"{src}: no images to prepare" + (f" ({len(skipped)} skipped by the size filters)"
                                                          if skipped else " (use --recursive for subfolders)"))
    jobs = _outputs(args, make_plans(args, sizes), src, dst)
    files.check_writable(dst)
    detector = focus.FaceDetector(args.face_model) if args.crop == "focus" else None
    if detector is not None and not detector.available:
        print("note: this OpenCV ships no Haar cascade (OpenCV 5); focus crops use saliency. Pass --face_model")
    interp = "lanczos" if args.interpolation == "lanczos4" else args.interpolation
    thumbs, counts = [], Counter()
    for plan, out, companions in jobs:
        with Image.open(plan.path) as probe:
            alpha = probe.mode in ("RGBA", "LA", "PA") or "transparency" in probe.info
        arr = load_image(str(plan.path), keep_alpha=alpha and out.suffix != ".jpg")
        if detector is not None:
            plan.focus = focus.find_focus(arr, detector)
            plan.offset = crop.focus_offset(plan, plan.focus)
        _write(crop.render(arr, plan, interp), out, args.quality)
        for source, target in companions:
            _copy(source, target)
        counts[plan.bucket] += 1
        if args.debug:
            thumbs.append(sheet.thumbnail(arr, plan))
            found = f" on the {plan.focus.source}" if plan.focus else ""
            print(f"{plan.path}: {plan.bucket[0]}x{plan.bucket[1]} crop at {plan.offset}{found}")
    if args.debug:
        sheet.write_sheet(thumbs, dst.parent / f"{dst.name}_crop_boxes.png")
    return counts, skipped


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    counts, skipped = prepare(args)
    buckets = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(counts.items()))
    print(f"{sum(counts.values())} images written to {args.dst_img_folder} ({buckets})")
    for line in skipped:
        print(f"skipped {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``prepare_images``: 0, or one error line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
