"""Convert LoRAs between kohya and diffusers/PEFT layouts: ``convert_lora``.

kohya → PEFT writes ``unet.*``, ``text_encoder.*`` and ``text_encoder_2.*`` keys with ``lora_A`` /
``lora_B``; alpha is baked into ``lora_B`` (``--alpha_mode bake``, loads the same everywhere) or kept
in ``lora_adapter_metadata`` (``metadata``, round-trips bit for bit). PEFT or old-diffusers inputs
convert back to kohya names with alphas from the adapter metadata (rank when baked).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from library.errors import UserError, run_cli
from library.lora.convert import (adapter_metadata, alpha_from_metadata, kohya_name, lora_family, parse_peft_key,
                                  peft_name, to_family_names, unet_name_table)
from library.lora.file import (check_finite, check_output, detect_format, group_modules, load_tensors,
                               unsupported_keys, write_lora)
from library.lora.algebra import lora_scale
from library.io.safetensors_io import save_lora_file
from library.models.detect import family_of_peft
from library.models.families import FAMILIES
from tools._common import PRECISIONS, add_common, describe, dtype_of, lora_metadata, progress


def setup_parser() -> argparse.ArgumentParser:
    """Flags of TOOLS.md §6 plus ``--drop_unsupported`` and ``--overwrite``."""
    p = argparse.ArgumentParser(prog="convert_lora", description=describe(__doc__))
    p.add_argument("--model", required=True, help="input LoRA (kohya, PEFT, old diffusers)")
    p.add_argument("--save_to", required=True, help="output file")
    p.add_argument("--to", required=True, choices=("kohya", "peft"), help="output layout")
    p.add_argument("--alpha_mode", choices=("bake", "metadata"), default="bake",
                   help="PEFT output: bake alpha/r into lora_B, or store alphas in lora_adapter_metadata")
    p.add_argument("--arch", choices=("auto", *FAMILIES), default="auto", help="model family (auto: detect)")
    p.add_argument("--save_precision", choices=PRECISIONS, default=None, help="output dtype (default: as stored)")
    p.add_argument("--drop_unsupported", action="store_true",
                   help="drop LoHa/LoKr/OFT/DoRA/bundle_emb keys instead of stopping")
    add_common(p, device=False)
    return p


def peft_to_modules(tensors: dict, metadata: dict, arch: str, drop: bool) -> tuple[dict, str]:
    """PEFT / old-diffusers tensors -> ``({kohya name: (down, up, alpha)}, family)``."""
    groups: dict = {}
    odd = []
    for key, t in tensors.items():
        parsed = parse_peft_key(key)
        if parsed is None:
            odd.append(key)
            continue
        groups.setdefault(parsed[:2], {})[parsed[2]] = t
    if odd and not drop:
        raise UserError(f"{len(odd)} keys have no kohya equivalent ({', '.join(odd[:3])}); pass --drop_unsupported")
    downs = {k: tuple(parts["down"].shape) for k, parts in groups.items() if "down" in parts}
    family = family_of_peft(downs) if arch == "auto" else arch
    inverse = {d: k for k, d in unet_name_table(family).items()}
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
    modules = {}
    for (comp, path), parts in groups.items():
        if len(parts) != 2:
            raise UserError(f"{comp}.{path}: only one of lora_A/lora_B is present; the file is incomplete")
        rank = parts["down"].shape[0]
        modules[kohya_name(comp, path, family, inverse)] = (parts["down"], parts["up"],
                                                          alpha_from_metadata(adapter, comp, path, rank))
    return modules, family


def to_peft(modules: dict, family: str, mode: str, dtype) -> tuple[dict, dict]:
    """kohya modules -> PEFT tensors and header metadata (``format`` + optional ``lora_adapter_metadata``)."""
    table = unet_name_table(family)
    tensors, entries = {}, {}
    for name, (down, up, alpha) in progress(modules.items(), "converting", len(modules)):
        comp, path = peft_name(name, table)
        rank = down.shape[0]
        dt = dtype or up.dtype
        if mode == "bake":
            up = (up.float() * lora_scale(alpha, rank)).to(dt)
        tensors[f"{comp}.{path}.lora_A.weight"] = down.to(dt).contiguous()
        tensors[f"{comp}.{path}.lora_B.weight"] = up.to(dt).contiguous()
        entries.setdefault(comp, []).append((path, rank, float(alpha) if alpha else float(rank)))
    meta = {"format": "pt"}
    if mode == "metadata":
        meta["lora_adapter_metadata"] = adapter_metadata(entries)
    return tensors, meta


def main(argv=None) -> int:
    """Console entry point (``convert_lora``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    check_output(args.save_to, args.overwrite)
    tensors, metadata = load_tensors(args.model)
    fmt = detect_format(tensors)
    bad = unsupported_keys(tensors)
    if bad and not args.drop_unsupported:
        raise UserError(f"{args.model}: {len(bad)} keys cannot be converted (LoHa/LoKr/OFT/DoRA/bundle_emb: "
                        f"{', '.join(bad[:3])}); pass --drop_unsupported to drop them")
    tensors = {k: v for k, v in tensors.items() if k not in set(bad)}
    if fmt in ("peft", "diffusers_old"):
        modules, family = peft_to_modules(tensors, metadata, args.arch, args.drop_unsupported)
    elif fmt in ("kohya", "lycoris"):
        lf = group_modules(tensors, args.model)
        if lf.extras and not args.drop_unsupported:
            raise UserError(f"{args.model}: keys {', '.join(list(lf.extras)[:3])} are not LoRA modules; pass --drop_unsupported")
        family = args.arch if args.arch != "auto" else lora_family(
            lf.modules, {n: tuple(m[0].shape) for n, m in lf.modules.items()}, metadata)
        renamed = to_family_names(lf.modules, family, unet_name_table(family))
        modules = {renamed[n]: m for n, m in lf.modules.items()}
    else:
        raise UserError(f"{args.model}: no kohya or PEFT LoRA keys found")
    if not modules:
        raise UserError(f"{args.model}: no LoRA modules to convert")
    check_finite(modules, args.model)
    dtype = dtype_of(args.save_precision)
    if args.to == "kohya":
        keep = {k: v for k, v in metadata.items() if k.startswith(("ss_", "modelspec.", "sd_train."))}
        meta = lora_metadata(keep, args.save_to, [args.model], family)
        write_lora(args.save_to, modules, meta, dtype)
    else:
        out, meta = to_peft(modules, family, args.alpha_mode, dtype)
        spec = {k: v for k, v in lora_metadata(metadata, args.save_to, [args.model], family).items()
                if k.startswith("modelspec.")}
        save_lora_file(out, args.save_to, {**meta, **spec}, add_hashes=False)
    print(f"converted {len(modules)} {family} modules ({fmt} -> {args.to}) to {Path(args.save_to).name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
