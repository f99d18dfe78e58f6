"""Write a tiny random-weight SD1.5 / SD2 / SDXL single-file checkpoint for tests and demos.

The file has the real single-file key layout (FORMAT.md §10) and its component configs in the
``sd_train.model_config`` metadata key, so ``library.checkpoint.io.load_models`` rebuilds the tiny
architecture from it.

Usage: ``python -m tools.make_tiny_model --arch sdxl OUT.safetensors [--seed N]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from library.errors import UserError, run_cli
from library.models.families import TINY_ARCHS, family_spec

ARCHS = tuple(TINY_ARCHS)


def tiny_configs(arch: str) -> tuple[str, dict]:
    """``(family, configs)`` of the tiny model of ``arch`` (``"sd15"``, ``"sd2"`` or ``"sdxl"``)."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
    return TINY_ARCHS[arch].name, TINY_ARCHS[arch].tiny_configs()


def checkpoint_extras(family: str) -> dict:
    """Kept-aside tensors a single file of ``family`` carries besides the models (SDXL's CLIP ``logit_scale``)."""
    return {s.checkpoint_prefix + "logit_scale": torch.tensor(4.6052)
            for s in family_spec(family).text_encoders if s.keeps_logit_scale}


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every tensor small seeded random values (default inits leave zeros and ones)."""
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)


def make_tiny_checkpoint(arch: str, path: str | Path, seed: int = 0) -> Path:
    """Build a tiny ``arch`` model with seeded random weights and write it as a single file.

    Args:
        arch: ``"sd15"``, ``"sd2"`` or ``"sdxl"``.
        path: Output ``.safetensors`` (or ``.ckpt``) path.
        seed: Seed of the random weights (same seed, same bytes).

    Returns:
        ``path`` as a ``Path``.
    """
    from library.checkpoint.io import LoadedModels, save_models
    from library.models.text_encoders import CLIPTextModel, CLIPTextModelWithProjection
    from library.models.vae import build_vae

    family, configs = tiny_configs(arch)
    spec = family_spec(family)
    unet = spec.build_unet(configs["unet"])
    tes = [(CLIPTextModelWithProjection if c.projection_dim else CLIPTextModel)(c) for c in configs["text_encoders"]]
    vae = build_vae(configs["vae"])
    gen = torch.Generator().manual_seed(seed)
    for m in (unet, *tes, vae):
        _randomize(m, gen)
    save_models(LoadedModels(family, unet, tes, vae, configs, checkpoint_extras(family), None), path)
    return Path(path)


def setup_parser() -> argparse.ArgumentParser:
    """Command-line options of make_tiny_model."""
    parser = argparse.ArgumentParser(description="Write a tiny random-weight SD checkpoint (tests, demos).")
    parser.add_argument("--arch", required=True, choices=ARCHS, help="model family")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    out = make_tiny_checkpoint(args.arch, args.out, args.seed)
    print(f"wrote {out} ({args.arch}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``make_tiny_model --arch sd15|sd2|sdxl OUT.safetensors [--seed N]``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
