"""Caption images with BLIP and write caption files: ``make_captions``.

kohya's ``finetune/make_captions.py`` flags. The model is a transformers BLIP captioning folder or hub
id (``--caption_weights``, default ``Salesforce/blip-image-captioning-large``, the transformers port of
kohya's default weights). Existing caption files need ``--overwrite``; images are checked before the
model loads and every caption file is written atomically. ``--seed`` makes sampling repeatable.

Example: ``make_captions train --batch_size 8 --caption_extension .txt --beam_search --num_beams 3``
"""

from __future__ import annotations

import argparse
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from library.dataset.images import load_image
from library.errors import UserError, run_cli
from library.prep import blip, files
from tools._common import device_of


def setup_parser() -> argparse.ArgumentParser:
    """kohya's captioning flags plus ``--overwrite`` and ``--device``."""
    p = argparse.ArgumentParser(prog="make_captions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", help="folder with the images to caption")
    p.add_argument("--caption_weights", default=blip.DEFAULT_MODEL,
                   help="transformers BLIP captioning model: local folder or hub id")
    p.add_argument("--caption_extension", default=".caption", help="caption file extension (default .caption)")
    p.add_argument("--caption_extention", default=None, help="old misspelling of --caption_extension")  # kohya-compat
    p.add_argument("--beam_search", action="store_true", help="beam search instead of nucleus sampling")
    p.add_argument("--batch_size", type=int, default=1, help="images per generate() call")
    p.add_argument("--max_data_loader_n_workers", type=int, default=None, help="threads that load images")
    p.add_argument("--num_beams", type=int, default=1, help="beams of --beam_search")
    p.add_argument("--top_p", type=float, default=0.9, help="top_p of nucleus sampling")
    p.add_argument("--max_length", type=int, default=75, help="longest caption in tokens (prompt included)")
    p.add_argument("--min_length", type=int, default=5, help="shortest caption in tokens (prompt included)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sampling")
    p.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files (sd-train)")
    p.add_argument("--debug", action="store_true", help="print each caption; show tracebacks")
    return p


def _check(args: argparse.Namespace, images, ext: str) -> None:
    for flag in ("batch_size", "num_beams", "max_length"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.min_length > args.max_length:
        raise UserError(f"--min_length {args.min_length} is above --max_length {args.max_length}")
    if not images:
        raise UserError(f"{args.train_data_dir}: no images found (use --recursive for subfolders)")
    files.check_images(images)
    if not args.overwrite:
        files.existing_outputs([files.caption_path(p, ext) for p in images],
                               "pass --overwrite to replace them")
    for folder in sorted({p.parent for p in images}):
        files.check_writable(folder, "image folder")


def make_captions(args: argparse.Namespace) -> int:
    """Caption every image; returns the number of caption files written."""
    ext = files.normalize_extension(args.caption_extention or args.caption_extension)
    images = files.list_images(args.train_data_dir, args.recursive)
    _check(args, images, ext)
    device = device_of(args.device or ("cuda" if torch.cuda.is_available() else None))
    processor, model = blip.load_blip(args.caption_weights, device)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    kwargs = blip.generation_kwargs(args.beam_search, args.num_beams, args.top_p, args.max_length, args.min_length)
    with ThreadPoolExecutor(max_workers=args.max_data_loader_n_workers or 1) as pool:
        for start in range(0, len(images), args.batch_size):
            chunk = images[start:start + args.batch_size]
            pixels = list(pool.map(lambda p: load_image(str(p)), chunk))
            for path, caption in zip(chunk, blip.caption_batch(processor, model, pixels, kwargs)):
                if args.debug:
                    print(f"{path}: {caption}")
                files.write_text(files.caption_path(path, ext), caption + "\n")
    return len(images)


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    print(f"{make_captions(args)} captions written")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``make_captions``: 0, or one error line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
