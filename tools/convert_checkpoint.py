"""Convert SD1.x / SD2.x / SDXL checkpoints between a single file and a diffusers folder.

kohya's ``tools/convert_diffusers20_original_sd.py`` interface, extended to SDXL:
``convert_checkpoint MODEL_TO_LOAD MODEL_TO_SAVE [--sdxl] [--save_precision_as fp16]``. A path ending
in ``.safetensors``/``.ckpt``/``.pt``/``.pth`` is a single file; anything else is a diffusers folder.
Runs offline: diffusers configs and tokenizers come from sd-train's built-in configs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from library.log import setup_logging
from library.errors import UserError, run_cli
from library.models.families import family_spec, flagged_families
from tools._common import describe

logger = logging.getLogger(__name__)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
_SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32, "no": None}


def setup_parser() -> argparse.ArgumentParser:
    """Flags of TOOLS.md §7 (kohya's converter) plus ``--sdxl``, ``--v_parameterization`` and ``--overwrite``."""
    p = argparse.ArgumentParser(prog="convert_checkpoint", description=describe(__doc__.split("\n")[0]))
    p.add_argument("model_to_load", help="single file (.safetensors/.ckpt) or diffusers folder to read")
    p.add_argument("model_to_save", help="single file (.safetensors/.ckpt) or diffusers folder to write")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("--v1", action="store_true", help="the model is SD1.x (default: detected)")
    fam.add_argument("--v2", action="store_true", help="the model is SD2.x (default: detected)")
    fam.add_argument("--sdxl", action="store_true", help="the model is SDXL (default: detected)")
    p.add_argument("--unet_use_linear_projection", action="store_true",
                   help="SD2 diffusers UNet uses linear proj_in/proj_out (always true for sd-train's SD2 configs)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="load weights as fp16")
    prec.add_argument("--bf16", action="store_true", help="load weights as bf16")
    prec.add_argument("--float", action="store_true", help="load weights as float32 (default)")
    p.add_argument("--save_precision_as", choices=tuple(_SAVE_DTYPES), default="no",
                   help="output dtype (no: keep the loaded dtype)")
    p.add_argument("--epoch", type=int, default=0, help="epoch written into .ckpt outputs")
    p.add_argument("--global_step", type=int, default=0, help="global_step written into .ckpt outputs")
    p.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra metadata for a .safetensors single-file output")
    p.add_argument("--variant", default=None, help="diffusers weight variant when writing a folder, e.g. fp16")
    p.add_argument("--reference_model", default=None,
                   help="accepted for compatibility; sd-train writes built-in configs and needs no reference")
    p.add_argument("--use_safetensors", action="store_true",
                   help="accepted for compatibility; diffusers folders are always written as .safetensors")
    p.add_argument("--v_parameterization", action="store_true",
                   help="write a v_prediction scheduler config (SD2 768-v); sd-train addition")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (sd-train: kohya overwrites)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def is_single_file(path: str | Path) -> bool:
    """Whether ``path`` names a single-file checkpoint (by suffix) rather than a diffusers folder."""
    return Path(path).suffix.lower() in SINGLE_FILE_SUFFIXES


def parse_metadata(items: list[str]) -> dict[str, str]:
    """``["k=v", …]`` -> ``{"k": "v"}``; UserError naming a malformed item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--metadata {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def _load_dtype(args) -> torch.dtype:
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


def path_family(src: Path) -> str:
    """Family of a single file (from its keys) or of a diffusers folder."""
    from library.checkpoint.io import detect_path_family

    return detect_path_family(src)


def _check_family(args, src: Path) -> str:
    asked = flagged_families(v1=args.v1, v2=args.v2, sdxl=args.sdxl)  # the flags are mutually exclusive
    found = family_spec(path_family(src))
    if asked and asked[0] != found:
        raise UserError(f"{src}: this checkpoint is {found.label} (--{found.tool_flag}); remove --{asked[0].tool_flag}")
    return found.name


def _check_paths(args, src: Path, dst: Path) -> None:
    if not src.exists():
        raise UserError(f"{src}: model_to_load not found")
    if src.is_dir() and is_single_file(src):
        raise UserError(f"{src}: is a folder but has a single-file suffix; rename it")
    if dst.exists() and not args.overwrite:
        raise UserError(f"{dst}: already exists; pass --overwrite to replace it")  # sd-train: kohya overwrites
    if dst.resolve() == src.resolve():
        raise UserError(f"{dst}: the output must differ from the input")


def save_single_file(models, path: Path, dtype: torch.dtype | None, metadata: dict[str, str],
                     epoch: int = 0, global_step: int = 0) -> None:
    """Write ``models`` as one LDM/SGM checkpoint, atomically.

    Args:
        models: ``LoadedModels``.
        path: ``.safetensors`` (streamed, configs + ``metadata`` in the header) or ``.ckpt``/``.pt``/``.pth``
            (``{"state_dict", "epoch", "global_step"}``).
        dtype: Output dtype of floating-point tensors; ``None`` keeps each tensor's dtype.
        metadata: Extra ``__metadata__`` strings (safetensors only).
    """
    from library.checkpoint import convert as cc
    from library.checkpoint.io import single_file_state
    from library.io.safetensors_io import atomic_path
    from library.io.safetensors_stream import write_streaming

    sd = single_file_state(models, dtype)
    if path.suffix.lower() == ".safetensors":
        meta = {cc.CONFIG_METADATA_KEY: cc.configs_to_json(models.family, models.configs), **metadata}
        write_streaming(path, [(k, v.dtype, tuple(v.shape)) for k, v in sd.items()], sd.__getitem__, meta)
        return
    if metadata:
        logger.warning("--metadata is ignored for %s outputs (only .safetensors has metadata)", path.suffix)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": sd, "epoch": epoch, "global_step": global_step}, tmp)  # kohya-compat


def _log_ignored(args, to_folder: bool) -> None:
    if args.unet_use_linear_projection:
        logger.info("--unet_use_linear_projection: the UNet keeps its own config (SD2 is always linear)")
    if args.reference_model:
        logger.info("--reference_model is ignored: sd-train writes its built-in configs (offline)")
    if args.variant and not to_folder:
        logger.warning("--variant is ignored for single-file outputs")
    if args.metadata and to_folder:
        logger.warning("--metadata is ignored for diffusers-folder outputs")


def convert(args) -> Path:
    """Run one conversion described by parsed ``args``; returns the output path."""
    from library.checkpoint.io import load_models
    from library.checkpoint.diffusers_export import save_diffusers_folder

    src, dst = Path(args.model_to_load), Path(args.model_to_save)
    _check_paths(args, src, dst)
    family = _check_family(args, src)
    metadata = parse_metadata(args.metadata)
    to_folder = not is_single_file(dst)
    _log_ignored(args, to_folder)
    models = load_models(src, dtype=_load_dtype(args))
    models.family = family  # a tiny SD2 folder loads as "sd1"; the modules are the same, only the layout differs
    out_dtype = _SAVE_DTYPES[args.save_precision_as]
    if to_folder:
        pred = "v_prediction" if args.v_parameterization else None
        save_diffusers_folder(models, dst, variant=args.variant, dtype=out_dtype, prediction_type=pred,
                              overwrite=args.overwrite)
    else:
        save_single_file(models, dst, out_dtype, metadata, args.epoch, args.global_step)
    return dst


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    setup_logging(simple=True)
    out = convert(args)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``convert_checkpoint MODEL_TO_LOAD MODEL_TO_SAVE [flags]``; returns the exit code."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
