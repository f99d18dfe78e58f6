"""Check a LoRA's weights: ``check_lora_weights`` (kohya ``networks/check_lora_weights.py``).

Prints kohya's per-tensor report (shape, mean |w|, min |w|) and, as sd-train additions, per-module
rank / alpha / ‖ΔW‖_F, non-finite values, modules whose ``up`` is all zeros (never trained), the
architecture whose module names fit, and names that match no module of it. Exit status 1 when a
tensor is NaN/Inf.
"""

from __future__ import annotations

import argparse
import functools

import torch

from library.errors import run_cli
from library.lora.convert import is_network_target, te_name_set, unet_name_table
from library.lora.file import load_tensors, read_lora
from library.lora.algebra import delta_weight, lora_scale
from tools._common import describe

_TE_LAYERS = {"sd1": {"lora_te": 12}, "sd2": {"lora_te": 24}, "sdxl": {"lora_te1": 12, "lora_te2": 32}}


def setup_parser() -> argparse.ArgumentParser:
    """kohya's positional file and ``-s/--show_all_keys``."""
    p = argparse.ArgumentParser(prog="check_lora_weights", description=describe(__doc__))
    p.add_argument("file", help="LoRA file")
    p.add_argument("-s", "--show_all_keys", action="store_true", help="report every tensor, not only the first 10 modules")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                  "lora_unet_output_blocks_")
_SD_PREFIXES = ("lora_te_", "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")


@functools.lru_cache(maxsize=None)
def _unet_names(family: str) -> frozenset[str]:
    # SD1 and SD2 UNets have the same module names (only widths differ): one table built for both
    table = unet_name_table("sd1" if family == "sd2" else family)
    return frozenset(n for n, d in table.items() if is_network_target(d, conv=True))


def family_names(family: str) -> set[str]:
    """Every module name ``networks.lora`` can create for a family (conv modules included)."""
    return set(_unet_names(family)) | te_name_set(family, _TE_LAYERS[family])


def candidate_families(names: set[str]) -> tuple[str, ...]:
    """Families whose name tables are worth building: kohya's SDXL names and SD1/SD2 names (diffusers paths,
    ``lora_te_``) do not overlap, and the SD1/SD2 tables need diffusers (seconds to import), the SDXL one not."""
    sdxl = any(n.startswith(_SDXL_PREFIXES) for n in names)
    sd = any(n.startswith(_SD_PREFIXES) for n in names)
    return (("sdxl",) if sdxl or not sd else ()) + (("sd1", "sd2") if sd or not sdxl else ())


def best_fit(names: set[str]) -> tuple[str, list[str]]:
    """``(family, unmatched names)`` for the family whose name set covers the most modules."""
    fits = {fam: sorted(names - family_names(fam)) for fam in candidate_families(names)}
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
