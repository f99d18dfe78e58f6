"""Extract a LoRA from the difference of two checkpoints: ``extract_lora`` (kohya ``extract_lora_from_models``).

Both checkpoints are streamed key by key (only targeted weights are read). Each difference
``tuned − original`` is decomposed with ``torch.linalg.svd(full_matrices=False)`` (the exact
reduced SVD: the same leading singular triplets as kohya's full SVD, far less memory; no randomized
``svd_lowrank`` is used), truncated to ``--dim`` (``--conv_dim`` for k×k convs) and clamped at
``--clamp_quantile``. Text encoders are kept only when some module differs by more than ``--min_diff``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from library.errors import UserError, run_cli
from library.lora.convert import TE_RE, checkpoint_family, checkpoint_targets, scaled_delta_rows
from library.lora.file import check_output, load_tensors, write_lora
from library.lora.svd import extract_factors
from library.io.safetensors_io import read_header
from library.models.families import family_spec, flagged_families
from tools._common import PRECISIONS, add_common, describe, device_of, dtype_of, lora_metadata, progress



def setup_parser() -> argparse.ArgumentParser:
    """kohya's flags (TOOLS.md §5) plus ``--overwrite``."""
    p = argparse.ArgumentParser(prog="extract_lora", description=describe(__doc__))
    p.add_argument("--model_org", required=True, help="original checkpoint (single file)")
    p.add_argument("--model_tuned", required=True, help="fine-tuned checkpoint (single file)")
    p.add_argument("--save_to", required=True, help="output LoRA")
    p.add_argument("--v2", action="store_true", help="SD2 (also detected from the keys)")
    p.add_argument("--v_parameterization", action="store_true", help="SD2 v-prediction (metadata only)")
    p.add_argument("--sdxl", action="store_true", help="SDXL (also detected from the keys)")
    p.add_argument("--dim", type=int, default=4, help="rank of Linear / 1×1 modules")
    p.add_argument("--conv_dim", type=int, default=None, help="rank of k×k convs (default: no conv modules)")
    p.add_argument("--clamp_quantile", type=float, default=0.99, help="clamp both factors at this signed-value quantile; >= 1 disables the clamp")
    p.add_argument("--min_diff", type=float, default=0.01, help="keep text encoders only if some module differs by more")
    p.add_argument("--load_precision", choices=PRECISIONS, default=None, help="load dtype (default: as stored)")
    p.add_argument("--save_precision", choices=PRECISIONS, default=None, help="output dtype (default: float32)")
    p.add_argument("--no_metadata", action="store_true", help="write only minimal metadata")
    p.add_argument("--load_original_model_to", default=None, help="accepted for kohya compatibility; inputs are streamed")
    p.add_argument("--load_tuned_model_to", default=None, help="accepted for kohya compatibility; inputs are streamed")
    add_common(p)
    return p


@contextlib.contextmanager
def open_weights(path: str):
    """Yield ``(shapes, get)`` for a checkpoint: memory-mapped safetensors, or a whole ``.ckpt``."""
    if Path(path).suffix.lower() == ".safetensors":
        from safetensors import safe_open

        header, _ = read_header(path)
        with safe_open(path, framework="pt", device="cpu") as f:
            yield {k: tuple(v["shape"]) for k, v in header.items()}, f.get_tensor
    else:
        print(f"warning: {path}: .ckpt files cannot be streamed; loading it whole")
        sd, _ = load_tensors(path)
        yield {k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__


def select_targets(args, shapes_org, shapes_tuned) -> tuple[str, dict]:
    """Family and ``{module: (key, chunk)}`` present with equal shapes in both checkpoints."""
    family = checkpoint_family(shapes_org)
    if checkpoint_family(shapes_tuned) != family:
        raise UserError(f"{args.model_tuned}: is {checkpoint_family(shapes_tuned)}, but {args.model_org} is {family}")
    if any(s.name != family for s in flagged_families(sdxl=args.sdxl, v2=args.v2)):
        raise UserError(f"{args.model_org}: this checkpoint is {family}; drop --sdxl/--v2")
    targets = checkpoint_targets(shapes_org, family, conv=args.conv_dim is not None)
    # kohya-compat: a text encoder built one layer short (SD2) has no LoRA on the file's placeholder layer
    last = {s.lora_prefix: str(s.lora_layers - 1)
            for s in family_spec(family).text_encoders if s.placeholder_last_layer}
    targets = {n: t for n, t in targets.items() if not ((m := TE_RE.match(n)) and last.get(m.group(1)) == m.group(2))}
    for name, (key, _) in targets.items():
        if shapes_tuned.get(key) != shapes_org[key]:
            raise UserError(f"{args.model_tuned}: {key} is {shapes_tuned.get(key)}, expected {shapes_org[key]}")
    return family, targets


def main(argv=None) -> int:
    """Console entry point (``extract_lora``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    if args.dim < 1 or (args.conv_dim is not None and args.conv_dim < 0):
        raise UserError(f"--dim must be >= 1 and --conv_dim >= 0 (got {args.dim}, {args.conv_dim})")
    check_output(args.save_to, args.overwrite)
    device, load = device_of(args.device), dtype_of(args.load_precision)
    with open_weights(args.model_org) as (s_org, get_org), open_weights(args.model_tuned) as (s_tuned, get_tuned):
        family, targets = select_targets(args, s_org, s_tuned)

        def diff(key, chunk):
            org, tuned = get_org(key), get_tuned(key)
            if load is not None:
                org, tuned = org.to(load), tuned.to(load)
            rows = scaled_delta_rows(org, chunk)
            return tuned[rows].to(device, torch.float32) - org[rows].to(device, torch.float32)

        te_names = [n for n in targets if TE_RE.match(n)]
        te_max = max((float(diff(*targets[n]).abs().max()) for n in te_names), default=0.0)
        keep_te = te_max > args.min_diff
        print(f"text encoder max |diff| = {te_max:.6g}: " + ("extracting" if keep_te else "skipping") + " text encoders")
        modules = {}
        for name, (key, chunk) in progress(targets.items(), "extracting", len(targets)):
            if TE_RE.match(name) and not keep_te:
                continue
            delta = diff(key, chunk)
            kxk = delta.dim() == 4 and tuple(delta.shape[2:]) != (1, 1)
            rank = args.conv_dim if kxk else args.dim
            if not rank:
                continue
            # sd-train: a quantile >= 1 disables the clamp (kohya's signed clamp at 1.0 still clips negatives)
            down, up = extract_factors(delta, rank, args.clamp_quantile if args.clamp_quantile < 1 else None)
            if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
                raise UserError(f"{key}: the difference has NaN or Inf values; nothing was written")
            modules[name] = (down.cpu(), up.cpu(), float(down.shape[0]))
    meta = _metadata(args, family)
    write_lora(args.save_to, modules, meta, dtype_of(args.save_precision) or torch.float32)
    print(f"saved {len(modules)} modules to {args.save_to}")
    return 0


def _metadata(args, family: str) -> dict[str, str]:
    spec = family_spec(family)
    version = spec.base_model_version(args.v_parameterization and spec.v2)  # only SD2 gets "_v" here
    meta = {"ss_v2": str(spec.v2), "ss_base_model_version": version, "ss_network_module": "networks.lora",
            "ss_network_dim": str(args.dim), "ss_network_alpha": str(float(args.dim))}
    if args.conv_dim is not None:
        meta["ss_network_args"] = json.dumps({"conv_dim": args.conv_dim, "conv_alpha": float(args.conv_dim)})
    meta = lora_metadata(meta, args.save_to, [args.model_org, args.model_tuned], family, args.no_metadata)
    meta["modelspec.prediction_type"] = "v" if args.v_parameterization else "epsilon"
    return meta


if __name__ == "__main__":
    raise SystemExit(main())
