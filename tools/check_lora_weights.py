"""Check a LoRA's weights: ``check_lora_weights`` (kohya ``networks/check_lora_weights.py``).

Prints kohya's per-tensor report (shape, mean |w|, min |w|) and, as sd-train additions, per-module
rank / alpha / ‖ΔW‖_F, non-finite values, modules whose ``up`` is all zeros (never trained), the
architecture whose module names fit, and names that match no module of it. Exit status 1 when a
tensor is NaN/Inf.
"""

from __future__ import annotations

import argparse

import torch

from library.errors import run_cli
from library.lora.convert import is_network_target, te_name_set, unet_name_table
from library.lora.file import load_tensors, read_lora
from library.lora.algebra import delta_weight, lora_scale
from library.models.detect import LORA_FIT_ORDER, lora_name_families
from library.models.families import family_spec
from tools._common import describe


def setup_parser() -> argparse.ArgumentParser:
    """kohya's positional file and ``-s/--show_all_keys``."""
    p = argparse.ArgumentParser(prog="check_lora_weights", description=describe(__doc__))
    p.add_argument("file", help="LoRA file")
    p.add_argument("-s", "--show_all_keys", action="store_true", help="report every tensor, not only the first 10 modules")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def family_names(family: str) -> set[str]:
    """Every module name ``networks.lora`` can create for a family (conv modules included)."""
    unet = {n for n, d in unet_name_table(family).items() if is_network_target(d, conv=True)}
    layers = {slot.lora_prefix: slot.lora_layers for slot in family_spec(family).text_encoders}
    return unet | te_name_set(family, layers)


def best_fit(names: set[str]) -> tuple[str, list[str]]:
    """``(family, unmatched names)`` for the family whose name set covers the most modules."""
    # only the tables a name can match: an SD1/SD2 table imports diffusers (seconds), the SGM (SDXL) one not
    candidates = lora_name_families(names) or LORA_FIT_ORDER
    fits = {spec.name: sorted(names - family_names(spec.name)) for spec in candidates}
    fam = min(fits, key=lambda f: len(fits[f]))
    return fam, fits[fam]


def main(argv=None) -> int:
    """Console entry point (``check_lora_weights``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    tensors, _ = load_tensors(args.file)
    lora_keys = [k for k in tensors if "lora_up" in k or "lora_down" in k or "lora_A" in k or "lora_B" in k]
    print(f"number of LoRA modules: {len(lora_keys)}")  # kohya-compat: counts tensors, two per module
    shown = lora_keys if args.show_all_keys else lora_keys[:20]
    for key in shown:
        v = tensors[key].float()
        print(f"{key},{str(tuple(v.shape)).replace(', ', '-')},{v.abs().mean():.8g},{v.abs().min():.8g}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    lf = read_lora(args.file)
    zero_up = [n for n, (_, up, _) in lf.modules.items() if not up.any()]
    print("\nmodule, rank, alpha, |dW|_F")
    for i, (name, (down, up, alpha)) in enumerate(lf.modules.items()):
        if args.show_all_keys or i < 10:
            norm = delta_weight(up.float(), down.float(), lora_scale(alpha, down.shape[0])).norm()
            print(f"{name}, {down.shape[0]}, {alpha}, {float(norm):.6g}")
    family, unmatched = best_fit(set(lf.modules))
    print(f"\narchitecture: {family} ({len(lf.modules) - len(unmatched)}/{len(lf.modules)} module names match)")
    for name in unmatched:
        print(f"  matches no {family} module: {name}")
    for key in lf.extras:
        if not key.endswith(".alpha"):
            print(f"  not a LoRA factor: {key}")
    print(f"non-finite tensors: {len(bad)}" + (": " + ", ".join(bad) if bad else ""))
    print(f"untrained modules (all-zero up): {len(zero_up)}" + (": " + ", ".join(zero_up[:10]) if zero_up else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
