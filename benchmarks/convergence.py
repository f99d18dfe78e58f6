"""Benchmark: optimizer steps until a LoRA has taught the toy SDXL model its held-out colour.

For each optimizer (AdamW / Prodigy / Lion) × rank (4 / 16) × loss weighting (plain / min-SNR γ=5), the
quickstart's concept LoRA is trained through the real entry point with a checkpoint every ``--every`` steps
up to ``--max_steps``; each checkpoint is rendered (trigger prompt, seeds 1-3) and the first step whose
green-share gain reaches the learning tests' margin (``tests/learning/toykit.py``) is reported, with the
control-prompt change at that step. Prints a Markdown table; run by hand (minutes per row on 2 cores).

Usage: ``python benchmarks/convergence.py [--max_steps 240] [--every 20] [--rows adamw-4-plain ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on a busy machine
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "learning"))

OPTIMIZERS = {  # name -> (optimizer flags, learning rate)
    "adamw": (["--optimizer_type", "AdamW"], "3e-3"),
    "prodigy": (["--optimizer_type", "Prodigy", "--optimizer_args", "weight_decay=0.0"], "1.0"),
    "lion": (["--optimizer_type", "Lion"], "3e-4"),
}
RANKS = (4, 16)
WEIGHTINGS = {"plain": [], "min-snr": ["--min_snr_gamma", "5"]}


def row_flags(optimizer: str, rank: int, weighting: str, every: int) -> list[str]:
    """Trainer flags of one table row (they override the quickstart's)."""
    flags, lr = OPTIMIZERS[optimizer]
    return [*flags, "--learning_rate", lr, "--network_dim", str(rank), "--network_alpha", str(rank),
            "--save_every_n_steps", str(every), *WEIGHTINGS[weighting]]


def lessons(out: Path, every: int, max_steps: int) -> list[tuple[int, object]]:
    """``(step, Lesson)`` for every checkpoint of a run in ``out``."""
    from library.toyworld import asset_path
    from sd_train.families.sdxl import SdxlFamily
    from sd_train.lora_preview import apply_lora, render
    from sd_train.toy_lesson import lesson_prompts, measure

    family = SdxlFamily()
    models = family.load(str(asset_path("sdxl")))
    prompts = lesson_prompts()
    before = render(family, models, prompts)
    found = []
    for step in range(every, max_steps + 1, every):
        name = f"toy_sks-step{step:08d}.safetensors" if step < max_steps else "toy_sks.safetensors"
        network = apply_lora(family, models, str(out / name))
        try:
            found.append((step, measure(before, render(family, models, prompts))))
        finally:
            network.restore()
    return found


def run_row(optimizer: str, rank: int, weighting: str, every: int, max_steps: int, verbose: bool = False) -> str:
    """Train one configuration and return its table row (``verbose``: print every checkpoint's numbers)."""
    from sd_train.toy_lesson import train_concept_lora
    from toykit import CONTROL_BAND, GAIN_MARGIN

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's report stays out of the table
            train_concept_lora(tmp, max_steps, row_flags(optimizer, rank, weighting, every))
        found = lessons(Path(tmp), every, max_steps)
    for step, lesson in found if verbose else ():
        print(f"  {optimizer}-{rank}-{weighting} step {step}: {lesson}", file=sys.stderr, flush=True)
    hit = next(((s, l) for s, l in found if l.gain >= GAIN_MARGIN and l.control_change <= CONTROL_BAND), None)
    final = found[-1][1]
    reached = f"{hit[0]}" if hit else f"> {max_steps}"
    control = f"{hit[1].control_change:.1f}" if hit else "–"
    return (f"| {optimizer} | {rank} | {weighting} | {reached} | {control} | {final.gain:+.3f} | "
            f"{final.control_change:.1f} | {time.perf_counter() - start:.0f} s |")


def main() -> int:
    """Run the requested rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=240, help="steps per run")
    parser.add_argument("--every", type=int, default=20, help="checkpoint (and measurement) cadence")
    parser.add_argument("--rows", nargs="*", default=None, help="e.g. adamw-4-plain lion-16-min-snr (default: all 12)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--verbose", action="store_true", help="print every checkpoint's lesson to stderr")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [f"{o}-{r}-{w}" for o, r, w in itertools.product(OPTIMIZERS, RANKS, WEIGHTINGS)]
    chosen = args.rows or rows
    print("| optimizer | rank | loss | steps to margin | control change there | final gain | final control "
          "change | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in chosen:
        optimizer, rank, weighting = row.split("-", 2)
        print(run_row(optimizer, int(rank), weighting, args.every, args.max_steps, args.verbose), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
