"""Print a safetensors file's metadata as sorted JSON plus a summary: ``show_metadata`` (kohya ``tools/show_metadata.py``).

The summary (sd-train) gives the family, LoRA modules per prefix, ranks and alphas, tensor dtypes,
whether ``sshs_model_hash`` matches the file's data section, and the most frequent training tags.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from library.errors import UserError, run_cli
from library.lora.convert import checkpoint_family, lora_family
from library.io.safetensors_io import data_section_sha256, read_header
from tools._common import describe

_PREFIXES = ("lora_unet", "lora_te1", "lora_te2", "lora_te", "unet", "text_encoder_2", "text_encoder", "bundle_emb")


def setup_parser() -> argparse.ArgumentParser:
    """``--model`` (kohya) plus ``--top`` and ``--no_summary``."""
    p = argparse.ArgumentParser(prog="show_metadata", description=describe(__doc__))
    p.add_argument("--model", required=True, help="a .safetensors file")
    p.add_argument("--top", type=int, default=20, help="number of most frequent tags to list")
    p.add_argument("--no_summary", action="store_true", help="print only the metadata JSON (kohya's output)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _prefix(key: str) -> str:
    return next((p for p in _PREFIXES if key.startswith(p + "_") or key.startswith(p + ".")), "other")


def _alphas(path: str, keys: list[str]) -> Counter:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return Counter(float(f.get_tensor(k)) for k in keys)


def hash_status(path: str, metadata: dict) -> str:
    """``matches``, ``MISMATCH``, ``absent`` or the LyCORIS (non-addnet) note for ``sshs_model_hash``."""
    stored = metadata.get("sshs_model_hash")
    if not stored:
        return "absent"
    if stored.startswith("0x"):
        return "LyCORIS hash (0x…), not the addnet hash of the data section"
    return "matches the data section" if stored == data_section_sha256(path) else "MISMATCH with the data section"


def top_tags(metadata: dict, n: int) -> list[tuple[str, int]]:
    """Most frequent tags over all folders of ``ss_tag_frequency`` (or of ``ss_datasets``)."""
    counts: Counter = Counter()
    sources = []
    if metadata.get("ss_tag_frequency"):
        sources.append(json.loads(metadata["ss_tag_frequency"]))
    for ds in json.loads(metadata.get("ss_datasets") or "[]"):
        if not metadata.get("ss_tag_frequency"):
            sources.append(ds.get("tag_frequency") or {})
    for freq in sources:
        for tags in freq.values():
            counts.update({str(t): int(c) for t, c in tags.items()})
    return counts.most_common(n)


def summary(path: str, header: dict, metadata: dict, top: int) -> list[str]:
    """Summary lines (sd-train addition)."""
    keys = list(header)
    downs = {k.rsplit(".", 2)[0]: tuple(v["shape"]) for k, v in header.items()
             if k.endswith((".lora_down.weight", ".lora_A.weight"))}
    if downs:
        family = lora_family(downs, downs, metadata)
    else:
        try:
            family = checkpoint_family(keys)
        except UserError:
            family = "unknown"
    lines = [f"family: {family}", f"tensors: {len(keys)}"]
    if downs:
        lines.append("modules by prefix: " + json.dumps(dict(sorted(Counter(_prefix(k) for k in downs).items()))))
        lines.append("ranks: " + json.dumps(dict(sorted(Counter(s[0] for s in downs.values()).items()))))
        alpha_keys = [k for k in keys if k.endswith(".alpha")]
        lines.append("alphas: " + json.dumps({str(a): c for a, c in sorted(_alphas(path, alpha_keys).items())}))
    lines.append("dtypes: " + json.dumps(dict(sorted(Counter(v["dtype"] for v in header.values()).items()))))
    lines.append(f"sshs_model_hash: {hash_status(path, metadata)}")
    tags = top_tags(metadata, top)
    if tags:
        lines.append(f"top {len(tags)} tags: " + ", ".join(f"{t} ({c})" for t, c in tags))
    return lines


def main(argv=None) -> int:
    """Console entry point (``show_metadata``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    if not args.model.endswith(".safetensors"):
        raise UserError(f"{args.model}: only .safetensors files have metadata")
    header, metadata = read_header(args.model)
    print(json.dumps(dict(sorted(metadata.items())), indent=4, ensure_ascii=False))
    if not args.no_summary:
        print("\n".join(summary(args.model, header, metadata, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
