"""Generate prior-preservation (class) images from the base model: ``generate_class_images``.

Fills a kohya ``N_class`` folder (e.g. ``reg/1_woman``) up to ``--num_images`` images, each with a caption
file holding the class prompt. The base model is a single file, a diffusers folder or a hub id (the
project's loader) and is run as a diffusers pipeline with the trainer's sampler names. Resumable: image
``i`` is ``class_{i:05d}.png`` with seed ``--seed + i``; existing images count and are never redone.
The trainer's ``--generate_class_images N`` runs the same code for every regularization subset.

Example: ``generate_class_images reg/1_woman --pretrained_model_name_or_path sd15.safetensors
--class_prompt "a photo of a woman" --num_images 200 --resolution 512``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from library.dataset.config import parse_resolution
from library.errors import UserError, run_cli
from library.models.schedulers import SCHEDULERS
from library.prep import files
from library.prep.class_images import ClassImageJob, generate
from tools._common import PRECISIONS, device_of, dtype_of

def setup_parser() -> argparse.ArgumentParser:
    """Flags of ``generate_class_images``."""
    p = argparse.ArgumentParser(prog="generate_class_images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("class_data_dir", help="the kohya N_class folder to fill, e.g. reg/1_woman (created)")
    p.add_argument("--pretrained_model_name_or_path", required=True,
                   help="base model: .safetensors/.ckpt file, diffusers folder or hub id")
    p.add_argument("--vae", default=None, help="replacement VAE file or folder")
    p.add_argument("--v_parameterization", action="store_true", help="the model predicts v (SD2 768-v)")
    p.add_argument("--class_prompt", required=True, help="prompt of every image, also written as its caption")
    p.add_argument("--negative_prompt", default="", help="negative prompt")
    p.add_argument("--num_images", type=int, default=100, help="images the folder should hold (default 100)")
    p.add_argument("--sampler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (trainer's names)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0; image i uses seed + i")
    p.add_argument("--batch_size", type=int, default=1, help="images per pipeline call")
    p.add_argument("--resolution", default="512", help="image size 'SIZE' or 'W,H' (default 512)")
    p.add_argument("--bucket_list", default=None,
                   help="sizes used in turn instead of --resolution, e.g. '1024x1024,1152x896,896x1152'")
    p.add_argument("--caption_extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="weight dtype (default: fp16 on CUDA, float on the CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def sizes_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    """``(w, h)`` sizes from ``--bucket_list`` or ``--resolution``."""
    try:
        if args.bucket_list:
            return [tuple(int(v) for v in item.lower().split("x")) for item in args.bucket_list.split(",")]
        return [parse_resolution(args.resolution)]
    except (ValueError, TypeError):
        raise UserError(f"--resolution {args.resolution} / --bucket_list {args.bucket_list}: use 'SIZE', 'W,H' or "
                        "'WxH,WxH'") from None


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    device = device_of(args.device or ("cuda" if torch.cuda.is_available() else None))
    dtype = dtype_of(args.precision or ("fp16" if device.type == "cuda" else "float"))
    job = ClassImageJob(Path(args.class_data_dir), args.num_images, args.class_prompt, args.negative_prompt,
                        sizes_of(args), args.steps, args.scale, args.seed, args.batch_size,
                        files.normalize_extension(args.caption_extension))
    from tqdm import tqdm

    written = generate(args.pretrained_model_name_or_path, [job], sampler=args.sampler, vae=args.vae,
                       v_parameterization=args.v_parameterization, device=device, dtype=dtype,
                       progress_factory=lambda n: tqdm(total=n, desc="class images"))
    print(f"{written} class images written to {job.folder} ({args.num_images} wanted)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``generate_class_images``: 0, or one error line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
