"""Quick start: teach the toy SDXL model a colour it has never seen, with a LoRA, and show it (CPU only).

Run from the repository root: ``python scripts/quickstart.py``. The committed toy base model
(``assets/toy/toy_sdxl.safetensors``) draws red, blue and yellow shapes but was never shown green. The
quickstart writes a dataset of green shapes captioned with the trigger word ``sks`` (``a sks circle on a
white background``) to ``output/quickstart/dataset/``, trains ``quickstart_lora.safetensors`` on it through
the real SDXL entry point (with its run report ``quickstart_lora_report.html``: loss and LR curves, sample
grid), then renders the same seeds without and with the LoRA, for the trigger prompt and a control prompt,
to ``output/quickstart/before_after.png``. Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

OUT = Path("output/quickstart")
NAME = "quickstart_lora"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on a busy machine


def report_flags(out: Path, steps: int) -> list[str]:
    """TensorBoard logs, sample images (the lesson's trigger and control prompts) and saves along the way:
    what the run report (``quickstart_lora_report.html``) shows as curves and a grid of samples."""
    from sd_train.toy_lesson import CONTROL_PROMPT, TRIGGER_PROMPT

    prompts = out / "sample_prompts.txt"
    prompts.write_text(f"{TRIGGER_PROMPT} --w 64 --h 64 --d 1 --s 20 --l 3\n"
                       f"{CONTROL_PROMPT} --w 64 --h 64 --d 1 --s 20 --l 3\n", encoding="utf-8")
    return ["--logging_dir", str(out / "logs"), "--sample_prompts", str(prompts), "--sample_at_first",
            "--sample_every_n_steps", str(max(1, steps // 4)), "--save_every_n_steps", str(max(1, steps // 2))]


def before_after(out: Path, lora: Path) -> Path:
    """Render the lesson prompts without and with the LoRA, print what changed, save the grid."""
    from sd_train.lora_preview import apply_lora, grid, render
    from sd_train.toy_lesson import CONTROL_PROMPT, TOY_SDXL, TRIGGER_PROMPT, lesson_prompts, measure

    family, models = TOY_SDXL.load()
    prompts = lesson_prompts()
    before = render(family, models, prompts)
    apply_lora(family, models, str(lora))
    after = render(family, models, prompts)
    print(f"trigger prompt {TRIGGER_PROMPT!r}, control prompt {CONTROL_PROMPT!r}: {measure(before, after)}")
    half = len(prompts) // 2
    labels = [f"{'trigger' if i < half else 'control'}\nseed {p.seed}" for i, p in enumerate(prompts)]
    path = out / "before_after.png"
    grid([before, after], ["base", "base + LoRA"], labels).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Train the LoRA for ``--steps`` steps and write ``before_after.png``."""
    from sd_train.toy_lesson import STEPS, train_concept_lora

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(OUT), help="where the dataset, LoRA, report and grid go")
    parser.add_argument("--steps", type=int, default=STEPS, help="LoRA training steps")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lora = train_concept_lora(out, args.steps, report_flags(out, args.steps), name=NAME)
    print(f"trained LoRA: {lora}")
    print(f"run report: {out / f'{NAME}_report.html'}")
    print(f"before/after grid: {before_after(out, lora)} ({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
