"""Resize a LoRA to a lower (or dynamic) rank: ``resize_lora`` (kohya ``networks/resize_lora.py``).

Each module's product ``up @ down`` is decomposed exactly from its factors (QR of both factors and
an SVD of the r×r core), so no ``out × in`` matrix is formed.
"""

from __future__ import annotations

import argparse
import statistics

from library.errors import UserError, run_cli
from library.lora.file import check_finite, check_output, is_kxk, rank_of, read_lora, write_lora
from library.lora.svd import resize_factors, retention_stats
from tools._common import PRECISIONS, describe, add_common, common_value, device_of, dtype_of, lora_metadata, progress

METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def setup_parser() -> argparse.ArgumentParser:
    """kohya's flags (TOOLS.md §3) plus ``--overwrite``."""
    p = argparse.ArgumentParser(prog="resize_lora", description=describe(__doc__))
    p.add_argument("--model", required=True, help="input LoRA (.safetensors/.ckpt/.pt)")
    p.add_argument("--save_to", required=True, help="output file (.safetensors, .ckpt, .pt, .pth)")
    p.add_argument("--new_rank", type=int, default=4, help="target rank, or the maximum rank with --dynamic_method")
    p.add_argument("--new_conv_rank", type=int, default=None, help="target rank of k×k conv modules (default: --new_rank)")
    p.add_argument("--save_precision", choices=PRECISIONS, default="float", help="output dtype")
    p.add_argument("--dynamic_method", choices=METHODS, default=None, help="pick each module's rank from its singular values")
    p.add_argument("--dynamic_param", type=float, default=None, help="parameter of --dynamic_method")
    p.add_argument("--verbose", action="store_true", help="print per-module retention (sum(S), Frobenius, max ratio)")
    add_common(p)
    return p


def _validate(args) -> None:
    if args.new_rank < 1 or (args.new_conv_rank is not None and args.new_conv_rank < 1):
        raise UserError(f"--new_rank/--new_conv_rank must be >= 1 (got {args.new_rank}/{args.new_conv_rank})")
    if args.dynamic_method and args.dynamic_param is None:
        raise UserError(f"--dynamic_method {args.dynamic_method} needs --dynamic_param")
    if args.dynamic_method and args.dynamic_param <= 0:
        raise UserError(f"--dynamic_param must be > 0 (got {args.dynamic_param})")


def _comment(args, old_rank: str, old_comment: str) -> str:
    if args.dynamic_method:
        note = f"Dynamic resize with {args.dynamic_method}: {args.dynamic_param} from {old_rank}"
    else:
        note = f"dimension is resized from {old_rank} to {args.new_rank}"
        if args.new_conv_rank is not None and args.new_conv_rank != args.new_rank:
            note += f" (conv: {args.new_conv_rank})"
    return f"{note}; {old_comment}"


def resize_modules(lf, args, device):
    """Resize every module; returns ``(modules, fro_retained list, report lines)``."""
    out, fros, lines = {}, [], []
    conv_rank = args.new_conv_rank or args.new_rank
    for name, mod in progress(lf.modules.items(), "resizing", len(lf.modules)):
        down, up, alpha = mod
        cap = conv_rank if is_kxk(mod) else args.new_rank
        new_down, new_up, new_alpha, (s, k) = resize_factors(down, up, alpha, cap, args.dynamic_method,
                                                             args.dynamic_param, device)
        out[name] = (new_down, new_up, new_alpha if alpha is not None else None)  # no alpha in: scale 1 kept
        sum_kept, fro_kept, ratio = retention_stats(s, k)
        fros.append(fro_kept)
        lines.append(f"{name:75} | sum(S) retained: {sum_kept:.1%}, fro retained: {fro_kept:.1%}, "
                     f"max(S) ratio: {ratio:0.1f}, rank {rank_of(mod)} -> {k}")
    return out, fros, lines


def main(argv=None) -> int:
    """Console entry point (``resize_lora``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    _validate(args)
    check_output(args.save_to, args.overwrite)
    device = device_of(args.device)
    lf = read_lora(args.model)
    check_finite(lf.modules, args.model)
    modules, fros, lines = resize_modules(lf, args, device)
    if args.verbose:
        print("\n".join(lines))
        std = statistics.pstdev(fros) if len(fros) > 1 else 0.0
        print(f"Average Frobenius norm retention: {statistics.mean(fros):.2%} | std: {std:0.3f}")
    meta = lora_metadata(lf.metadata, args.save_to, [args.model])
    old_rank = meta.get("ss_network_dim") or common_value(rank_of(m) for m in lf.modules.values())
    meta["ss_training_comment"] = _comment(args, old_rank, meta.get("ss_training_comment", "None"))
    meta["ss_network_dim"] = "Dynamic" if args.dynamic_method else str(args.new_rank)
    meta["ss_network_alpha"] = common_value((m[2] or m[0].shape[0] for m in modules.values()), as_float=True)
    write_lora(args.save_to, modules, meta, dtype_of(args.save_precision), lf.extras, lf.parts)
    print(f"saved {len(modules)} modules to {args.save_to}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
