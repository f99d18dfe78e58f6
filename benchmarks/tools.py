"""Benchmark: resize a full-size SDXL rank-128 LoRA to rank 32, factor SVD vs dense SVD per module.

The LoRA has kohya's SDXL key set (``lora_keys_sdxl.tsv``: UNet + both text encoders, 986 modules)
with random weights, generated module by module. The fast path (``library.lora.svd.resize_factors``:
Householder QR of both factors, SVD of the 128×128 core, only the k kept vectors formed) runs on
every module. The dense path (kohya: form ``up @ down``, ``torch.linalg.svd`` with full matrices,
truncate) is timed per distinct module shape on ``--dense_samples`` modules (the first ones of that
shape, which the fast path also ran); their mean times the module count of that shape is its
estimate (the output says so), and the products of both paths are compared on those modules. Both
paths run in the same process with the same ``torch.set_num_threads`` (printed), after one
untimed warm-up call each.

Usage: ``python benchmarks/tools.py [--keys PATH] [--rank 128] [--new_rank 32] [--device cpu]
[--dense_full_matrices 1] [--dense_samples 2] [--threads N]``.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import time
from collections import Counter
from pathlib import Path

import torch

from library.lora.svd import resize_factors

DEFAULT_KEYS = Path(__file__).resolve().parents[1] / "tests" / "tools" / "data" / "lora_keys_sdxl.tsv.gz"


def module_shapes(path: Path) -> dict[str, tuple[tuple, tuple]]:
    """``{module: (down shape, up shape)}`` at rank 4 from a golden TSV (plain or gzipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = {}
    with opener(path, "rt") as f:
        for line in f:
            key, _, shape = line.rstrip("\n").split("\t")
            rows[key] = tuple(int(x) for x in shape.split("x")) if shape else ()
    return {k[: -len(".lora_down.weight")]: (s, rows[k[: -len("lora_down.weight")] + "lora_up.weight"])
            for k, s in rows.items() if k.endswith(".lora_down.weight")}


def factors(down_shape, up_shape, rank, gen):
    """Random factors of one module at ``rank``."""
    down = torch.randn((rank, *down_shape[1:]), generator=gen) / down_shape[1] ** 0.5
    up = torch.randn((up_shape[0], rank, *up_shape[2:]), generator=gen) * 0.05
    return down, up


def dense_resize(down, up, new_rank, device, full_matrices):
    """kohya's method: SVD of the dense product ``up @ down``, truncated to ``(up (out, k), down (k, n))``."""
    w = up.reshape(up.shape[0], -1).to(device) @ down.reshape(down.shape[0], -1).to(device)
    u, s, vh = torch.linalg.svd(w, full_matrices=full_matrices)
    return u[:, :new_rank] * s[:new_rank], vh[:new_rank]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    """``(result, seconds)`` of ``fn()`` with device synchronisation around it."""
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - t0


def _shape_key(ds, us):
    return us[0], int(torch.Size(ds[1:]).numel())


def _warm_up(args):
    """One untimed call of each path so one-off library start-up is not charged to either."""
    down, up = factors((args.rank, 64), (320, args.rank), args.rank, torch.Generator().manual_seed(1))
    resize_factors(down, up, args.rank, args.new_rank, device=args.device)
    dense_resize(down, up, args.new_rank, args.device, bool(args.dense_full_matrices))


def run_fast(args, shapes, gen):
    """Resize every module with the factor SVD; keep the first ``dense_samples`` modules of each shape."""
    total, by_shape, samples = 0.0, Counter(), {}
    for ds, us in shapes.values():
        down, up = factors(ds, us, args.rank, gen)
        (new_down, new_up, _, _), dt = _timed(
            lambda: resize_factors(down, up, args.rank, args.new_rank, device=args.device), args.device)
        total += dt
        key = _shape_key(ds, us)
        by_shape[key] += dt
        if len(samples.setdefault(key, [])) < args.dense_samples:
            samples[key].append((down, up, new_up.reshape(new_up.shape[0], -1) @ new_down.reshape(new_down.shape[0], -1)))
    return total, by_shape, samples


def run(args) -> None:
    """Time both paths in the same process and print the per-shape table and the overall ratio."""
    torch.set_num_threads(args.threads)
    shapes = module_shapes(Path(args.keys))
    counts = Counter(_shape_key(ds, us) for ds, us in shapes.values())
    _warm_up(args)
    fast_time, fast_by_shape, samples = run_fast(args, shapes, torch.Generator().manual_seed(0))
    fast_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}; modules {len(shapes)}, "
          f"rank {args.rank} -> {args.new_rank}, {len(counts)} distinct shapes")
    print(f"fast path: every module timed. dense path (full_matrices={bool(args.dense_full_matrices)}): "
          f"{args.dense_samples} module(s) per shape timed, mean x module count")
    print(f"{'out x n':>14} {'count':>6} {'fast s':>9} {'dense s (est.)':>15} {'ratio':>8} {'max |diff|':>11} {'rel':>9}")
    dense_total = 0.0
    for key, count in sorted(counts.items()):
        times, diffs, rels = [], [], []
        for down, up, fast_w in samples[key]:
            (d_up, d_down), dt = _timed(
                lambda: dense_resize(down, up, args.new_rank, args.device, bool(args.dense_full_matrices)), args.device)
            times.append(dt)
            ref = d_up @ d_down
            diffs.append((fast_w.to(ref.device) - ref).abs().max().item())
            rels.append(((fast_w.to(ref.device) - ref).norm() / ref.norm()).item())
        dense = sum(times) / len(times) * count
        dense_total += dense
        print(f"{key[0]:>6} x {key[1]:<6} {count:>6} {fast_by_shape[key]:>9.3f} {dense:>15.3f} "
              f"{dense / max(fast_by_shape[key], 1e-9):>8.1f} {max(diffs):>11.2e} {max(rels):>9.2e}")
    print(f"{'total':>14} {len(shapes):>6} {fast_time:>9.3f} {dense_total:>15.3f} {dense_total / fast_time:>8.1f}")
    print(f"speed-up dense / fast: {dense_total / fast_time:.1f}x; peak RSS after the fast path: {fast_rss:.0f} MiB, "
          f"after both: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
          + (f"; peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
             if torch.device(args.device).type == "cuda" else ""))


def main(argv=None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", default=str(DEFAULT_KEYS), help="golden LoRA key list (.tsv or .tsv.gz)")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--new_rank", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dense_full_matrices", type=int, default=1, help="1: kohya's full SVD; 0: reduced")
    p.add_argument("--dense_samples", type=int, default=2, help="modules per distinct shape timed on the dense path")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both paths (1: stable timings on a shared CPU)")
    p.add_argument("--merge_dir", default=None, help="instead: merge benchmark on a synthetic SD1.5 checkpoint here")
    args = p.parse_args(argv)
    if args.merge_dir:
        merge_benchmark(Path(args.merge_dir))
    else:
        run(args)
    return 0



def merge_benchmark(workdir: Path, rank: int = 32) -> None:
    """Merge a rank-``rank`` LoRA into a synthetic full-size SD1.5 fp16 checkpoint; report memory.

    The checkpoint has the real key layout (``sd15_ldm_keys.tsv``, about 2.1 GB in fp16) with random
    values; the merge runs in a child process so its peak RSS is measured alone.
    """
    import subprocess
    import sys

    from library.lora.convert import checkpoint_targets
    from library.io.safetensors_io import save_lora_file
    from library.io.safetensors_stream import write_streaming

    with gzip.open(DEFAULT_KEYS.with_name("sd15_ldm_keys.tsv.gz"), "rt") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    plan = [(k, {"F16": torch.float16, "F32": torch.float32, "I64": torch.int64}[d],
             tuple(int(x) for x in s.split("x")) if s else ()) for k, d, s in rows]
    ckpt = workdir / "sd15_synthetic.safetensors"
    gen = torch.Generator().manual_seed(0)
    shapes, dtypes = {k: s for k, _, s in plan}, {k: d for k, d, _ in plan}
    write_streaming(ckpt, plan, lambda k: torch.randn(shapes[k], generator=gen).to(dtypes[k]), {"format": "pt"})
    lora = {}
    for name, (key, _) in checkpoint_targets(shapes, "sd1", conv=False).items():
        s = shapes[key]
        lora[f"{name}.lora_down.weight"] = torch.randn((rank, *s[1:]), generator=gen) * 0.01
        lora[f"{name}.lora_up.weight"] = torch.randn((s[0], rank, *([1, 1] if len(s) == 4 else [])), generator=gen) * 0.01
        lora[f"{name}.alpha"] = torch.tensor(float(rank))
    save_lora_file(lora, workdir / "lora.safetensors", {})
    code = ("import resource, sys, threading, time\n"
            "peak = [0]\n"
            "def anon():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1]) // 1024\n"
            "def watch():\n"
            "    while True:\n"
            "        peak[0] = max(peak[0], anon()); time.sleep(0.01)\n"
            "threading.Thread(target=watch, daemon=True).start()\n"
            "from tools import merge_lora\n"
            "merge_lora.main(sys.argv[1:])\n"
            "print(f'child peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (includes "
            "memory-mapped file pages); peak anonymous RSS (sampled every 10 ms) {peak[0]} MiB')\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, "--sd_model", str(ckpt), "--models", str(workdir / "lora.safetensors"),
                    "--ratios", "1", "--save_to", str(workdir / "merged.safetensors"), "--overwrite"], check=True)
    print(f"merge of {len(lora) // 3} modules into {ckpt.stat().st_size / 2**20:.0f} MiB checkpoint: "
          f"{time.perf_counter() - t0:.1f} s")

if __name__ == "__main__":
    raise SystemExit(main())
