"""Benchmark: load a full-size SDXL single file with ``library.checkpoint.io.load_models``.

Writes a random-weight fp16 SDXL checkpoint with the exact keys and shapes of the real one
(``spec/data/sdxl_base_ldm_keys.tsv``, about 6.9 GB) to a temporary folder, then loads it in a
fresh process (so peak RSS is the loader's own), checks that every key was consumed and nothing
was missing, and prints a table of wall time and peak RSS.

Usage: ``python benchmarks/load_full_sdxl.py [--manifest TSV] [--tmp-dir DIR] [--dtype fp16|bf16|fp32]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}
_DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "tests" / "assets" / "sdxl_base_ldm_keys.tsv"

_CHILD = r"""
import json, resource, sys, time, torch
from library.checkpoint import convert as cc
from library.checkpoint.io import load_models, open_tensors
path, dtype = sys.argv[1], getattr(torch, sys.argv[2])
t0 = time.perf_counter()
models = load_models(path, expected_family="sdxl", dtype=dtype)
seconds = time.perf_counter() - t0
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
states = {"unet": models.unet.state_dict(), "vae": models.vae.state_dict()}
states.update({f"te{i}": te.state_dict() for i, te in enumerate(models.text_encoders)})
written = set(cc.to_single_file("sdxl", states, models.extras))
keys = set(open_tensors(path)[0])
dtypes = sorted({str(t.dtype) for s in states.values() for t in s.values()})
print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb, "missing": sorted(keys - written)[:5],
                  "unexpected": sorted(written - keys)[:5], "params": sum(t.numel() for s in states.values()
                  for t in s.values()), "dtypes": dtypes}))
"""


def read_manifest(path: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``(key, dtype, shape)`` rows of a spec/data key manifest."""
    rows = []
    for line in Path(path).read_text().splitlines():
        key, dtype, shape = line.split("\t")
        rows.append((key, _DTYPES[dtype], tuple(int(s) for s in shape.split("x")) if shape else ()))
    return rows


def write_random_checkpoint(rows, path: Path, seed: int = 0) -> float:
    """Stream a random-weight checkpoint with ``rows``' keys/dtypes/shapes to ``path``; returns seconds."""
    from library.io.safetensors_stream import write_streaming

    gen = torch.Generator().manual_seed(seed)
    plan = {k: (d, s) for k, d, s in rows}

    def make(name: str) -> torch.Tensor:
        dtype, shape = plan[name]
        return (torch.randn(shape, generator=gen) * 0.02).to(dtype)

    t0 = time.perf_counter()
    write_streaming(path, rows, make)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Write the file, load it in a child process, print the table; non-zero exit on a key mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=_DEFAULT_MANIFEST, help="key manifest TSV (key, dtype, shape)")
    parser.add_argument("--tmp-dir", default=None, help="where to write the ~7 GB file (default: system temp)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="load dtype")
    args = parser.parse_args(argv)
    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    rows = read_manifest(args.manifest)
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        path = Path(tmp) / "sdxl_random.safetensors"
        write_s = write_random_checkpoint(rows, path)
        size_gb = path.stat().st_size / 1e9
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), dtype], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| step | value |\n|---|---|")
    print(f"| file | {len(rows)} keys, {size_gb:.2f} GB fp16 (written in {write_s:.1f} s) |")
    print(f"| load_models ({args.dtype}) | {r['seconds']:.1f} s |")
    print(f"| peak RSS of the loading process | {r['peak_rss_mb']:.0f} MiB |")
    print(f"| parameters loaded | {r['params'] / 1e9:.3f} B ({', '.join(r['dtypes'])}) |")
    print(f"| missing / unexpected keys | {len(r['missing'])} / {len(r['unexpected'])} |")
    if r["missing"] or r["unexpected"]:
        print(f"missing: {r['missing']} unexpected: {r['unexpected']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
