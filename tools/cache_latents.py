"""Write the latent ``.npz`` caches of a dataset, as a training run with ``--cache_latents_to_disk`` would.

Takes the dataset flags of training (e.g. ``--dataset_config``, ``--train_data_dir``, ``--in_json``,
``--resolution``, bucket flags, ``--caption_extension``) plus the model flags that change the latents. Files are
``{stem}_{W:04d}x{H:04d}_{sd|sdxl}.npz`` next to each image; valid existing files
are kept, so a second run encodes nothing.

Usage: ``cache_latents --pretrained_model_name_or_path M.safetensors --dataset_config D.toml [--sdxl]``.
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import fields

import torch

from library.dataset import latent_cache
from library.dataset.config import CliDefaults
from library.dataset.dataset import BucketBatchDataset
from library.dataset.plan import build_plan
from library.dataset.prepare import prepare
from library.errors import run_cli
from library.models.families import FamilySpec, family_from_flags, family_spec
from tools._common import add_dataset_flags, describe

logger = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # --mixed_precision -> weight dtype


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dataset flags of training (same names and defaults)."""
    add_dataset_flags(parser.add_argument_group("dataset (same flags as training)"))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, precision and cache flags shared by both cache tools."""
    parser.add_argument("--pretrained_model_name_or_path", required=True,
                        help="checkpoint (.safetensors/.ckpt) or diffusers folder")
    parser.add_argument("--vae", default=None, help="separate VAE file (as in training)")
    parser.add_argument("--sdxl", action="store_true", help="the checkpoint is SDXL")
    parser.add_argument("--v2", action="store_true", help="the checkpoint is SD2")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no",
                        help="dtype of the VAE and text encoders while encoding (as in training)")
    parser.add_argument("--no_half_vae", action="store_true", help="keep the VAE in fp32 under mixed precision")
    parser.add_argument("--vae_batch_size", type=int, default=1, help="images (or captions) per encoder call")
    parser.add_argument("--seed", type=int, default=None, help="training seed (latent sampling, validation split)")
    parser.add_argument("--skip_cache_check", action="store_true", help="trust existing cache files (existence only)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="deprecated alias of --skip_cache_check")  # kohya-compat
    parser.add_argument("--tokenizer_cache_dir", default=None, help="kohya tokenizer cache folder (TE outputs)")
    parser.add_argument("--max_token_length", type=int, choices=[75, 150, 225], default=None,
                        help="caption tokens (TE outputs): 75 (default), 150 or 225")
    parser.add_argument("--device", default=None, help="encoder device (default: cuda when available)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def setup_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """Parser of the cache tools."""
    parser = argparse.ArgumentParser(description=describe(description),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_dataset_arguments(parser)
    return parser


def _family(args: argparse.Namespace) -> FamilySpec:
    """The family ``--sdxl`` / ``--v2`` name (SD1 without either)."""
    return family_from_flags(sdxl=args.sdxl, v2=args.v2)


def seeds(args: argparse.Namespace) -> tuple[int, int]:
    """``(seed, dataset_seed)`` drawn as the trainer does (random seed when ``--seed`` is unset)."""
    seed = random.randint(0, 2**32 - 1) if args.seed is None else args.seed
    rng = random.Random(seed)
    return seed, rng.randint(0, 2**31)  # kohya-compat: dataset seed drawn right after seeding


def build_datasets(args: argparse.Namespace, seed: int, dataset_seed: int) -> list[BucketBatchDataset]:
    """The training (and validation, if split) datasets of the flags, planned and bucketed like training."""
    values = vars(args)
    defaults = CliDefaults(**{f.name: values[f.name] for f in fields(CliDefaults)})
    prepared = prepare(build_plan(defaults), seed=seed, bucket_step_multiple=_family(args).bucket_step_multiple,
                       latents_cached=True)
    print(prepared.format_report())
    sets = [prepared.train] + ([prepared.validation] if prepared.validation else [])
    return [BucketBatchDataset(p, dataset_seed=dataset_seed) for p in sets]


def load(args: argparse.Namespace):
    """``(LoadedModels, device, weight dtype)``; a checkpoint of another family is a UserError."""
    from library.checkpoint.io import load_models

    models = load_models(args.pretrained_model_name_or_path, expected_family=_family(args).name, v2=args.v2,
                         vae_path=args.vae)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return models, device, DTYPES.get(args.mixed_precision, torch.float32)


def latent_encoder(vae: torch.nn.Module, device: torch.device, generator: torch.Generator):
    """``images (B, 3, H, W) in [-1, 1] -> unscaled latents (B, 4, H/8, W/8)`` float32 on the CPU.

    Samples ``latent_dist`` with ``generator`` (not the mean, kohya-compat), like the trainer.
    """
    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = images.to(device, next(vae.parameters()).dtype)
            return vae.encode(x).latent_dist.sample(generator=generator).float().cpu()

    return encode


def cache_all_latents(args: argparse.Namespace) -> int:
    """Plan the dataset, load the VAE and write every missing or stale latent cache; returns images encoded."""
    seed, dataset_seed = seeds(args)
    datasets = build_datasets(args, seed, dataset_seed)
    models, device, dtype = load(args)
    vae = models.vae.requires_grad_(False).eval()
    vae.to(device, torch.float32 if args.no_half_vae else dtype)
    encode = latent_encoder(vae, device, torch.Generator().manual_seed(seed))
    tag = family_spec(models.family).latent_cache_tag
    count = 0
    for ds in datasets:
        count += latent_cache.cache_latents(ds, encode, batch_size=args.vae_batch_size or 1, to_disk=True,
                                            skip_check=args.skip_cache_check or args.skip_existing, family_tag=tag)
    return count


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    if args.skip_existing:
        logger.warning("--skip_existing is deprecated; use --skip_cache_check")  # kohya-compat
    count = cache_all_latents(args)
    print(f"latents encoded: {count} (existing valid caches kept)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``cache_latents``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
