"""Merge LoRAs into one LoRA of a chosen rank: ``svd_merge_lora`` (kohya ``networks/svd_merge_lora.py``).

For each module the inputs are stacked into one exact low-rank product ``[s₁B₁|…|s_KB_K]·[A₁;…;A_K]``
(``s_i = ratio_i · alpha_i / r_i``), decomposed from the factors and truncated to
``--new_rank``; both factors are then clamped at the 0.99 quantile (kohya's ``CLAMP_QUANTILE``).
"""

from __future__ import annotations

import argparse
import json

from library.errors import UserError, run_cli
from library.lora.convert import lbw_weight, lora_family
from library.lora.file import check_finite, check_output, is_kxk, read_lora, write_lora
from library.lora.svd import svd_merge_factors
from tools._common import (PRECISIONS, describe, add_common, add_lbws, check_ratios, device_of, dtype_of, lora_metadata,
                           parse_lbws, progress)

CLAMP_QUANTILE = 0.99  # kohya-compat


def setup_parser() -> argparse.ArgumentParser:
    """kohya's flags (TOOLS.md §4) plus ``--overwrite``."""
    p = argparse.ArgumentParser(prog="svd_merge_lora", description=describe(__doc__))
    p.add_argument("--models", nargs="+", required=True, help="LoRA files to merge")
    p.add_argument("--ratios", nargs="+", type=float, required=True, help="one multiplier per model")
    p.add_argument("--new_rank", type=int, default=4, help="output rank of Linear / 1×1 modules")
    p.add_argument("--new_conv_rank", type=int, default=None, help="output rank of k×k convs (default: --new_rank)")
    p.add_argument("--precision", choices=PRECISIONS, default="float", help="compute dtype (SVD always runs in float32)")
    p.add_argument("--save_precision", choices=PRECISIONS, default=None, help="output dtype (default: --precision)")
    p.add_argument("--save_to", required=True, help="output file")
    p.add_argument("--no_metadata", action="store_true", help="write only minimal metadata")
    add_lbws(p)
    add_common(p)
    return p


def collect(loras, ratios, lbws=None) -> dict[str, list]:
    """``{module: [(down, up, alpha, ratio × lbw), …]}`` in first-seen order, with shape checks."""
    items: dict[str, list] = {}
    for lf, ratio, lbw in zip(loras, ratios, lbws or [None] * len(loras)):
        for name, (down, up, alpha) in lf.modules.items():
            group = items.setdefault(name, [])
            if group:
                d0, u0 = group[0][0], group[0][1]
                if down[0].numel() != d0[0].numel() or up.shape[0] != u0.shape[0]:
                    raise UserError(f"{lf.path}: module {name} has shape {tuple(down.shape)}/{tuple(up.shape)}, "
                                    f"other inputs {tuple(d0.shape)}/{tuple(u0.shape)}; are the LoRAs for the same model?")
            group.append((down, up, alpha, ratio * lbw_weight(name, lbw)))
    return items


def main(argv=None) -> int:
    """Console entry point (``svd_merge_lora``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    ratios = check_ratios(args.models, args.ratios)
    lbws = parse_lbws(args.lbws, args.models)
    conv_rank = args.new_conv_rank or args.new_rank
    if args.new_rank < 1 or conv_rank < 1:
        raise UserError(f"--new_rank/--new_conv_rank must be >= 1 (got {args.new_rank}/{conv_rank})")
    check_output(args.save_to, args.overwrite)
    device = device_of(args.device)
    loras = [read_lora(m) for m in args.models]
    for lf in loras:
        check_finite(lf.modules, lf.path)
    out = {}
    for name, group in progress(collect(loras, ratios, lbws).items(), "svd merge"):
        k = conv_rank if is_kxk(group[0][:3]) else args.new_rank
        down, up = svd_merge_factors(group, k, device, CLAMP_QUANTILE)
        out[name] = (down, up, float(down.shape[0]))
    first = loras[0]
    family = lora_family(first.modules, {n: tuple(m[0].shape) for n, m in first.modules.items()}, first.metadata)
    base = {k: v for k, v in first.metadata.items() if k in ("ss_v2", "ss_base_model_version") or k.startswith("modelspec.")}
    meta = lora_metadata(base if args.no_metadata else first.metadata, args.save_to, args.models, family, args.no_metadata)
    meta.update({"ss_network_module": "networks.lora", "ss_network_dim": str(args.new_rank),
                 "ss_network_alpha": str(args.new_rank),
                 "ss_network_args": json.dumps({"conv_dim": conv_rank, "conv_alpha": conv_rank})})
    save_dtype = dtype_of(args.save_precision or args.precision)
    write_lora(args.save_to, out, meta, save_dtype)
    print(f"saved {len(out)} modules to {args.save_to}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
