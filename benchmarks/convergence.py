"""Benchmark: optimizer steps until a LoRA has taught the toy SDXL model its held-out colour.

For each optimizer (AdamW / Prodigy / Lion) × rank (4 / 16) × loss weighting (plain / min-SNR γ=5), the
quickstart's concept LoRA is trained through the real entry point with a checkpoint every ``--every`` steps
up to ``--max_steps``; each checkpoint is rendered (lesson prompts, seeds 1-3) and measured against the
learning tests' margins (``tests/learning/toykit.py``: green-share gain for the trigger prompt, change of the
control prompt). Reported: the first checkpoint that passes, the first from which every later one passes
(lessons can come and go between checkpoints), and the last one's numbers. Prints a Markdown table; run by
hand (minutes per row on 2 cores).

Usage: ``python benchmarks/convergence.py [--max_steps 200] [--every 20] [--rows adamw-4-plain ...]``
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on a busy machine
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "learning"))

OPTIMIZERS = {  # name -> (optimizer flags, learning rate)
    "adamw": (["--optimizer_type", "AdamW"], "5e-3"),
    "prodigy": (["--optimizer_type", "Prodigy", "--optimizer_args", "weight_decay=0.0", "safeguard_warmup=True",
                 "use_bias_correction=True"], "1.0"),
    "lion": (["--optimizer_type", "Lion"], "1e-3"),
}
RANKS = (4, 16)
WEIGHTINGS = {"plain": ["--min_snr_gamma", "0"], "min-snr": ["--min_snr_gamma", "5"]}  # 0: off (kohya)


def row_flags(optimizer: str, rank: int, weighting: str, every: int) -> list[str]:
    """Trainer flags of one table row (they override the quickstart's)."""
    flags, lr = OPTIMIZERS[optimizer]
    return [*flags, "--learning_rate", lr, "--network_dim", str(rank), "--network_alpha", str(rank),
            "--save_every_n_steps", str(every), *WEIGHTINGS[weighting]]


def lessons(out: Path, every: int, max_steps: int) -> list[tuple[int, object]]:
    """``(step, Lesson)`` for every checkpoint of a run in ``out``."""
    from sd_train.lora_preview import apply_lora, render
    from sd_train.toy_lesson import TOY_SDXL, lesson_prompts, measure

    family, models = TOY_SDXL.load()
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
    from toykit import failures

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's report stays out of the table
            train_concept_lora(tmp, max_steps, row_flags(optimizer, rank, weighting, every))
        found = lessons(Path(tmp), every, max_steps)
    for step, lesson in found if verbose else ():
        print(f"  {optimizer}-{rank}-{weighting} step {step}: {lesson}", file=sys.stderr, flush=True)
    passed = [not failures(lesson) for _, lesson in found]
    first = next((s for (s, _), ok in zip(found, passed) if ok), None)
    held = next((s for i, (s, _) in enumerate(found) if all(passed[i:])), None)
    final = found[-1][1]

    def steps(value):
        return str(value) if value else f"> {max_steps}"

    return (f"| {optimizer} | {rank} | {weighting} | {steps(first)} | {steps(held)} | {final.gain:+.3f} | "
            f"{final.control_change:.1f} | {time.perf_counter() - start:.0f} s |")


def main() -> int:
    """Run the requested rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=200, help="steps per run")
    parser.add_argument("--every", type=int, default=20, help="checkpoint (and measurement) cadence")
    parser.add_argument("--rows", nargs="*", default=None, help="e.g. adamw-4-plain lion-16-min-snr (default: all 12)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--verbose", action="store_true", help="print every checkpoint's lesson to stderr")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [f"{o}-{r}-{w}" for o, r, w in itertools.product(OPTIMIZERS, RANKS, WEIGHTINGS)]
    chosen = args.rows or rows
    print("| optimizer | rank | loss | first passes at | passes from | final gain | final control change | "
          "wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in chosen:
        optimizer, rank, weighting = row.split("-", 2)
        print(run_row(optimizer, int(rank), weighting, args.every, args.max_steps, args.verbose), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
