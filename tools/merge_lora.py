"""Merge LoRAs into a checkpoint, or into one LoRA: ``merge_lora`` / ``sdxl_merge_lora``.

Into a checkpoint (``--sd_model``): tensors are streamed from the memory-mapped base one at a time,
each targeted weight gets ``Σ ratio · alpha/r · up @ down`` in the compute dtype, and the output is
written by the streaming writer, so peak memory is about one tensor plus the LoRA factors.
LoRA + LoRA: kohya's approximate merge by default, or an exact rank concatenation with ``--concat``.
"""

from __future__ import annotations

import argparse
import datetime
import math
from pathlib import Path

import torch

from library.errors import UserError, run_cli
from library.lora.convert import checkpoint_family, checkpoint_targets, lbw_weight, lora_family, scaled_delta_rows
from library.lora.file import check_finite, check_output, load_tensors, read_lora, write_lora
from library.lora.algebra import delta_weight, lora_scale
from library.lora.svd import concat_merge, shuffle_ranks
from library.io.safetensors_io import atomic_path, read_header
from library.io.safetensors_stream import write_streaming
from library.models.families import family_spec, flagged_families
from tools._common import (PRECISIONS, add_common, add_lbws, check_ratios, common_value, describe, device_of,
                           dtype_of, lora_metadata, parse_lbws, progress, progress_bar)

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def setup_parser(prog: str = "merge_lora") -> argparse.ArgumentParser:
    """kohya's flags (TOOLS.md §1) plus ``--overwrite``; ``prog`` is ``merge_lora`` or ``sdxl_merge_lora``."""
    p = argparse.ArgumentParser(prog=prog, description=describe(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd_model", default=None, help="base single-file checkpoint; without it the LoRAs are merged into one LoRA")
    p.add_argument("--save_to", required=True, help="output .safetensors (or .ckpt)")
    p.add_argument("--models", nargs="+", required=True, help="LoRA files, applied in order")
    p.add_argument("--ratios", nargs="+", type=float, required=True, help="one multiplier per LoRA")
    p.add_argument("--v2", action="store_true", help="SD2 base (also detected from the keys)")
    p.add_argument("--sdxl", action="store_true", help="SDXL base (also detected from the keys)")
    p.add_argument("--precision", choices=PRECISIONS, default="float", help="compute dtype")
    p.add_argument("--save_precision", choices=PRECISIONS, default=None,
                   help="output dtype (default: each tensor keeps its input dtype)")
    p.add_argument("--concat", action="store_true", help="LoRA+LoRA: concatenate ranks (exact sum of the deltas)")
    p.add_argument("--shuffle", action="store_true", help="LoRA+LoRA: randomly permute rank channels after merging")
    p.add_argument("--no_metadata", action="store_true", help="write only minimal metadata")
    add_lbws(p)
    add_common(p)
    return p


def plan_targets(loras, ratios, lbws, shapes, family) -> dict[str, list]:
    """``{checkpoint key: [(module, ratio, in_proj chunk, name), …]}``; warns about unmatched modules."""
    targets = checkpoint_targets(shapes, family, conv=True, aliases=True)
    per_key: dict[str, list] = {}
    for lf, ratio, lbw in zip(loras, ratios, lbws):
        missing = [n for n in lf.modules if n not in targets]
        fam = lora_family(lf.modules, {n: tuple(m[0].shape) for n, m in lf.modules.items()}, lf.metadata)
        sgm = family_spec(fam).sgm_unet  # an SGM-named LoRA on a diffusers-named base, or the reverse
        other = sgm != family_spec(family).sgm_unet and (sgm or any(n.startswith("lora_te_") for n in lf.modules))
        if len(missing) == len(lf.modules) or other:
            raise UserError(f"{lf.path}: the LoRA does not fit the {family} checkpoint ({len(missing)} of "
                            f"{len(lf.modules)} modules unmatched; it looks like {fam}); use a LoRA trained for this model")
        if missing:
            print(f"warning: {lf.path}: {len(missing)} modules have no weight in the checkpoint and are skipped: "
                  + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
        for name, mod in lf.modules.items():
            if name in targets:
                key, chunk = targets[name]
                per_key.setdefault(key, []).append((mod, ratio * lbw_weight(name, lbw), chunk, name))
    return per_key


def apply_deltas(key: str, weight: torch.Tensor, items, compute: torch.dtype, device) -> torch.Tensor:
    """``W + Σ ratio · scale · up @ down`` for one checkpoint tensor, in the compute dtype."""
    w = weight.to(device, compute)
    for (down, up, alpha), ratio, chunk, name in items:
        delta = delta_weight(up.to(device, torch.float32), down.to(device, torch.float32), lora_scale(alpha, down.shape[0]))
        rows = scaled_delta_rows(w, chunk)
        target = w[rows]
        if delta.numel() != target.numel():
            raise UserError(f"module {name}: LoRA delta {tuple(delta.shape)} does not fit {key} {tuple(target.shape)}; "
                            "is the LoRA for this model?")
        w[rows] += (delta.reshape(target.shape) * ratio).to(compute)
    if not torch.isfinite(w).all():
        raise UserError(f"{key}: merged weight has NaN or Inf (modules {[i[3] for i in items]}); nothing was written")
    return w.cpu()


def merge_into_checkpoint(args, loras, ratios, lbws) -> int:
    """Stream the base checkpoint, merging the LoRAs into the targeted weights."""
    compute, save = dtype_of(args.precision), dtype_of(args.save_precision)
    device = device_of(args.device)
    if Path(args.sd_model).is_dir():
        raise UserError(f"{args.sd_model}: diffusers folders are not supported as --sd_model; "
                        "convert it to a single file with convert_checkpoint first")
    streamed = Path(args.sd_model).suffix.lower() == ".safetensors"
    if streamed:
        header, base_meta = read_header(args.sd_model)
        shapes = {k: tuple(v["shape"]) for k, v in header.items()}
        dtypes = {k: _ST_DTYPES[v["dtype"]] for k, v in header.items()}
    else:
        print(f"warning: {args.sd_model}: .ckpt files cannot be streamed; loading it whole")
        whole, base_meta = load_tensors(args.sd_model)
        shapes, dtypes = {k: tuple(v.shape) for k, v in whole.items()}, {k: v.dtype for k, v in whole.items()}
    family = checkpoint_family(shapes)
    flagged = flagged_families(sdxl=args.sdxl, v2=args.v2)
    if any(s.name != family for s in flagged):
        raise UserError(f"{args.sd_model}: this checkpoint is {family}, not {flagged[0].name}; drop --sdxl/--v2")
    per_key = plan_targets(loras, ratios, lbws, shapes, family)
    out_dtype = {k: (save if save is not None and d.is_floating_point else d) for k, d in dtypes.items()}
    meta = dict(base_meta)
    meta.update({"modelspec.title": Path(args.save_to).stem, "modelspec.merged_from": ", ".join(
        Path(p).stem for p in [args.sd_model, *args.models]),
        "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat()})
    meta.setdefault("modelspec.sai_model_spec", "1.0.1")
    meta.setdefault("modelspec.architecture", family_spec(family).modelspec_architecture(False))
    meta["modelspec.implementation"] = "https://github.com/Stability-AI/generative-models"
    bar = progress_bar(len(shapes), "merging")

    def fetch(get, key):
        bar.update(1)
        t = get(key)
        if key in per_key:
            t = apply_deltas(key, t, per_key[key], compute, device)
        return t.to(out_dtype[key])

    if streamed and args.save_to.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(args.sd_model, framework="pt", device="cpu") as f:
            plan = [(k, out_dtype[k], shapes[k]) for k in shapes]
            write_streaming(args.save_to, plan, lambda k: fetch(f.get_tensor, k), meta)
    else:
        whole = whole if not streamed else load_tensors(args.sd_model)[0]
        merged = {k: fetch(whole.__getitem__, k) for k in shapes}
        if args.save_to.endswith(".safetensors"):
            write_streaming(args.save_to, [(k, v.dtype, tuple(v.shape)) for k, v in merged.items()], merged.__getitem__, meta)
        else:
            with atomic_path(args.save_to) as tmp:
                torch.save({"state_dict": merged}, tmp)
    bar.close()
    print(f"merged {sum(len(v) for v in per_key.values())} modules into {len(per_key)} tensors; saved {args.save_to}")
    return 0


def merge_loras(args, loras, ratios, lbws) -> int:
    """LoRA + LoRA: kohya's approximation, or exact concatenation with ``--concat``."""
    groups: dict[str, list] = {}
    for lf, ratio, lbw in zip(loras, ratios, lbws):
        for name, (down, up, alpha) in lf.modules.items():
            groups.setdefault(name, []).append((down, up, alpha, ratio * lbw_weight(name, lbw)))
    out = {}
    for name, items in progress(groups.items(), "merging", len(groups)):
        down, up, alpha = concat_merge(items) if args.concat else _kohya_merge(name, items)
        if args.shuffle:
            down, up = shuffle_ranks(down, up)
        out[name] = (down, up, alpha)
    if not args.concat:
        print("note: the default LoRA+LoRA merge is kohya's approximation (not the sum of the deltas); "
              "use --concat for an exact sum or svd_merge_lora for a fixed rank")
    first = loras[0]
    family = lora_family(first.modules, {n: tuple(m[0].shape) for n, m in first.modules.items()}, first.metadata)
    base = {k: v for k, v in first.metadata.items() if k in ("ss_v2", "ss_base_model_version") or k.startswith("modelspec.")}
    meta = lora_metadata(base, args.save_to, args.models, family, args.no_metadata)
    meta.update({"ss_network_module": "networks.lora",
                 "ss_network_dim": common_value(m[0].shape[0] for m in out.values()),
                 "ss_network_alpha": common_value((m[2] for m in out.values()), as_float=True)})
    write_lora(args.save_to, out, meta, dtype_of(args.save_precision or args.precision))
    print(f"saved {len(out)} modules to {args.save_to}")
    return 0


def _kohya_merge(name: str, items):
    """kohya: ``merged += t · sqrt(alpha_i / alpha_base) · ratio_i`` (``|·|`` for up); needs equal ranks."""
    base_down, _, base_alpha, _ = items[0]
    base_alpha = base_alpha if base_alpha else float(base_down.shape[0])
    down_sum, up_sum = 0, 0
    for down, up, alpha, ratio in items:
        if down.shape != base_down.shape:
            raise UserError(f"module {name}: ranks differ between inputs ({tuple(down.shape)} vs "
                            f"{tuple(base_down.shape)}); use --concat or svd_merge_lora")
        s = math.sqrt((alpha if alpha else float(down.shape[0])) / base_alpha) * ratio  # kohya-compat
        down_sum = down_sum + down.float() * s
        up_sum = up_sum + up.float() * abs(s)  # kohya-compat: the sign goes on down only
    return down_sum, up_sum, base_alpha


def main(argv=None) -> int:
    """Console entry point ``merge_lora``."""
    return run_cli(_main, argv)


def sdxl_main(argv=None) -> int:
    """Console entry point ``sdxl_merge_lora`` (kohya's SDXL script name; same flags, SDXL detected from the keys)."""
    return run_cli(lambda args: _main(args, "sdxl_merge_lora"), argv)


def _main(argv, prog: str = "merge_lora") -> int:
    args = setup_parser(prog).parse_args(argv)
    ratios = check_ratios(args.models, args.ratios)
    lbws = parse_lbws(args.lbws, args.models)
    check_output(args.save_to, args.overwrite)
    loras = [read_lora(m) for m in args.models]
    for lf in loras:
        check_finite(lf.modules, lf.path)
    if args.sd_model:
        return merge_into_checkpoint(args, loras, ratios, lbws)
    return merge_loras(args, loras, ratios, lbws)


if __name__ == "__main__":
    raise SystemExit(main())
