"""Benchmark: median step time, time to first step, peak RSS (and peak VRAM on CUDA) of a training run.

The trainer runs in a child Python process (so peak RSS is the trainer's own): the child imports
``sd_train.trainer``, wraps ``Trainer._optimizer_step`` and a few setup phases with timers and RSS
probes, then calls the normal entry point (``sdxl_train_network`` / ``train_network``) with the
given flags. The parent prints a Markdown table, so the same workload can be compared with other
trainers (kohya-ss/sd-scripts) run on the same flags.

Usage::

    python benchmarks/train_step.py [--entry sdxl|sd] [--max-anon-gb 16] -- <trainer flags...>
    python benchmarks/train_step.py --make-full-sdxl DIR [--full-dtype fp16|fp32] [-- <trainer flags...>]

``--make-full-sdxl DIR`` writes a full-size random-weight SDXL single file (keys and shapes of
``spec/data/sdxl_base_ldm_keys.tsv``, via ``benchmarks/load_full_sdxl.py``) and the 64 px sample
dataset (``tools.make_sample_dataset``) into DIR (kept between runs), then runs the issue's workload
(UNet-only LoRA rank 4, fp32, cached latents and text-encoder outputs, 3 steps) unless trainer flags
are given after ``--``. ``--max-anon-gb`` kills the child when its anonymous resident memory (heap,
not the reclaimable pages of the memory-mapped checkpoint) grows past the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, os, resource, sys, time
from functools import wraps
out_path, entry, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
import torch
from library.dataset import latent_cache
from sd_train import trainer as tr
from sd_train.families.base import ModelFamily

record = {"opt_steps": [], "opt_cpu": [], "phases": [], "train_start": None}

def rss_mb():
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

def probe(owner, name, label):
    fn = getattr(owner, name)
    @wraps(fn)
    def wrapped(*a, **k):
        t0 = time.time()
        result = fn(*a, **k)
        now, hwm = rss_mb()
        record["phases"].append({"phase": label, "seconds": time.time() - t0, "rss_mb": now, "hwm_mb": hwm})
        return result
    setattr(owner, name, wrapped)

for name in ("_setup_data", "_setup_models", "_setup_network", "_setup_optimizer", "_build_metadata"):
    probe(tr.Trainer, name, name.lstrip("_"))
probe(ModelFamily, "load", "load_models")
probe(latent_cache, "cache_latents", "cache_latents")
probe(latent_cache, "cache_text_encoder_outputs", "cache_text_encoder_outputs")

train, opt_step = tr.Trainer.train, tr.Trainer._optimizer_step
def timed_train(self):
    record["train_start"] = time.time()
    return train(self)
def timed_opt_step(self, *a, **k):
    result = opt_step(self, *a, **k)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    record["opt_steps"].append(time.time())
    record["opt_cpu"].append(time.process_time())
    return result
tr.Trainer.train, tr.Trainer._optimizer_step = timed_train, timed_opt_step

def finish(code):
    record["exit_code"] = code
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        record["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
        record["peak_vram_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    with open(out_path, "w") as f:
        json.dump(record, f)

from sd_train.entry import entry_point
main = lambda args: entry_point(entry, args)
code = 1
try:
    code = main(argv)
finally:
    finish(code)
sys.exit(code)
"""


def workload_flags(model: Path, dataset_toml: Path, out_dir: Path) -> list[str]:
    """Trainer flags of the issue's workload: full-size SDXL, 64 px, UNet-only rank 4, fp32, 3 steps."""
    return ["--pretrained_model_name_or_path", str(model), "--dataset_config", str(dataset_toml),
            "--output_dir", str(out_dir), "--output_name", "bench", "--network_module", "networks.lora",
            "--network_dim", "4", "--network_alpha", "1", "--network_train_unet_only", "--cache_latents",
            "--cache_text_encoder_outputs", "--mixed_precision", "no", "--save_precision", "float",
            "--resolution", "64", "--max_train_steps", "3", "--max_data_loader_n_workers", "0",
            "--optimizer_type", "AdamW", "--learning_rate", "1e-4", "--seed", "0"]


def make_full_sdxl(folder: Path, dtype: str) -> tuple[Path, Path]:
    """Write (once) the random full-size SDXL file and the 64 px sample dataset; returns both paths.

    Args:
        folder: Output folder (created); files already there are reused.
        dtype: ``"fp16"`` (about 6.9 GB, the real file's dtypes) or ``"fp32"`` (float weights as F32).
    """
    import importlib.util

    import torch

    from tools.make_sample_dataset import make_sample_dataset

    spec = importlib.util.spec_from_file_location("load_full_sdxl", _HERE / "load_full_sdxl.py")
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"sdxl_random_{dtype}.safetensors"
    if not model.is_file():
        rows = writer.read_manifest(writer._DEFAULT_MANIFEST)
        if dtype == "fp32":
            rows = [(k, torch.float32 if d.is_floating_point else d, s) for k, d, s in rows]
        seconds = writer.write_random_checkpoint(rows, model)
        print(f"wrote {model} ({model.stat().st_size / 1e9:.2f} GB) in {seconds:.0f} s", flush=True)
    toml = folder / "data" / "sample_dataset.toml"
    if not toml.is_file():
        make_sample_dataset(folder / "data", toml)
    return model, toml


def _proc_memory_mb(pid: int) -> dict[str, float]:
    """``{"VmRSS", "RssAnon", "RssFile"}`` of process ``pid`` in MiB (empty when it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines)
    return {f[0][:-1]: int(f[1]) / 1024 for f in fields if f and f[0][:-1] in ("VmRSS", "RssAnon", "RssFile")}


def run_child(entry: str, flags: list[str], max_anon_gb: float | None) -> tuple[dict, float, bool]:
    """Run the trainer in a child process, sampling its memory every 0.25 s.

    Returns:
        (child record plus ``peak_anon_mb`` / ``file_at_peak_mb``, start wall time, killed for memory).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.json"
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), entry, *flags])
        killed, peak = False, {"RssAnon": 0.0, "RssFile": 0.0}
        while proc.poll() is None:
            mem = _proc_memory_mb(proc.pid)
            if mem.get("RssAnon", 0.0) > peak["RssAnon"]:
                peak = mem
            if max_anon_gb and mem.get("RssAnon", 0.0) > max_anon_gb * 1024:
                proc.kill()
                killed = True
            time.sleep(0.25)
        proc.wait()
        record = json.loads(out.read_text()) if out.is_file() else {"exit_code": proc.returncode}
    record.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    record["peak_anon_mb"], record["file_at_peak_mb"] = peak["RssAnon"], peak.get("RssFile", 0.0)
    return record, start, killed


def summarize(record: dict, start: float) -> list[tuple[str, str]]:
    """Rows ``(measure, value)`` of the result table from a child record."""
    steps = record.get("opt_steps") or []
    rows = []
    if steps:
        first = steps[0] - start
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        first_step = steps[0] - (record.get("train_start") or start)
        median = statistics.median(gaps) if gaps else first_step
        rows.append(("optimizer steps timed", str(len(steps))))
        rows.append(("median step time (steps 2..n)" if gaps else "step time (only step)", f"{median:.2f} s"))
        cpu = record.get("opt_cpu") or []
        if len(cpu) > 1:
            cpu_median = statistics.median(b - a for a, b in zip(cpu, cpu[1:]))
            rows.append(("median CPU time per step (all threads)", f"{cpu_median:.2f} s"))
        rows.append(("first step (train() start → step 1 done)", f"{first_step:.2f} s"))
        rows.append(("time to first step (process start → step 1 done)", f"{first:.1f} s"))
    for phase in record.get("phases", []):
        rows.append((f"phase {phase['phase']}", f"{phase['seconds']:.1f} s, RSS after {phase['rss_mb']:.0f} MiB, "
                     f"peak so far {phase['hwm_mb']:.0f} MiB"))
    rows.append(("peak RSS (trainer process, ru_maxrss)", f"{record['peak_rss_mb']:.0f} MiB"))
    rows.append(("peak anonymous RSS (sampled; + file-backed pages then)",
                 f"{record['peak_anon_mb']:.0f} MiB (+ {record['file_at_peak_mb']:.0f} MiB)"))
    if "peak_vram_mb" in record:
        rows.append(("peak VRAM allocated / reserved",
                     f"{record['peak_vram_mb']:.0f} / {record['peak_vram_reserved_mb']:.0f} MiB"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse the options, optionally build the full-size workload, run it and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/tools.py shadows tools/
    if str(_HERE.parent) not in sys.path:
        sys.path.insert(0, str(_HERE.parent))
    from sd_train.families import ENTRIES, family_class

    split = argv.index("--") if "--" in argv else len(argv)
    own, flags = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", choices=tuple(ENTRIES), default="sdxl", help="trainer script to run")
    parser.add_argument("--make-full-sdxl", metavar="DIR", default=None,
                        help="write a full-size random SDXL file + 64 px dataset in DIR and benchmark them")
    parser.add_argument("--full-dtype", choices=("fp16", "fp32"), default="fp16", help="dtype of that file")
    parser.add_argument("--max-anon-gb", type=float, default=None,
                        help="kill the trainer when its anonymous RSS passes this (file pages are reclaimable)")
    args = parser.parse_args(own)
    if args.make_full_sdxl:
        model, toml = make_full_sdxl(Path(args.make_full_sdxl), args.full_dtype)
        flags = flags or workload_flags(model, toml, Path(args.make_full_sdxl) / "output")
    if not flags:
        parser.error("give the trainer flags after --, or --make-full-sdxl DIR")
    record, start, killed = run_child(args.entry, flags, args.max_anon_gb)
    print(f"\ncommand: {family_class(args.entry).script()} {' '.join(flags)}")
    print(f"device: {'CUDA' if 'peak_vram_mb' in record else 'CPU'}, {os.cpu_count()} cores\n")
    print("| measure | value |\n|---|---|")
    for name, value in summarize(record, start):
        print(f"| {name} | {value} |")
    if killed:
        print(f"\nstopped: the trainer's anonymous RSS passed --max-anon-gb {args.max_anon_gb}", file=sys.stderr)
        return 3
    return int(record.get("exit_code") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
