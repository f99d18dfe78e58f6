"""Run by hand: break the trainer three ways and show that the learning test's margins catch each break.

``python tests/learning/breakages.py [--steps N]`` trains the quickstart's concept LoRA four times (as is,
then with each breakage patched in) and prints the lesson numbers next to the test's thresholds. The
observed numbers are quoted in ``test_toy_lora.py``. The breakages patch the real code paths in-process:

* ``frozen_up``: the LoRA up-weights are left out of the optimizer (they stay at their zero init);
* ``no_text``: the trainer conditions every step on the empty caption (the text is ignored);
* ``wrong_target``: the loss regresses the clean latents instead of the added noise.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


@contextlib.contextmanager
def frozen_up():
    """Drop every ``lora_up`` parameter from the optimizer groups."""
    from sd_train.network_host import NetworkHost

    original = NetworkHost.prepare_optimizer_params

    def without_ups(self, optimizer_opts):
        groups, descriptions = original(self, optimizer_opts)
        ups = {id(p) for name, p in self.network.named_parameters() if "lora_up" in name}
        return [{**g, "params": [p for p in g["params"] if id(p) not in ups]} for g in groups], descriptions

    NetworkHost.prepare_optimizer_params = without_ups
    try:
        yield
    finally:
        NetworkHost.prepare_optimizer_params = original


@contextlib.contextmanager
def no_text():
    """Encode ``""`` for every caption of every training batch."""
    from sd_train import objective

    original = objective.batch_conds

    def empty(trainer, batch):
        return original(trainer, {**batch, "captions": [""] * len(batch["captions"])})

    objective.batch_conds = empty
    try:
        yield
    finally:
        objective.batch_conds = original


@contextlib.contextmanager
def wrong_target():
    """Hand the loss the clean latents where it expects the noise that was added."""
    from sd_train import noise

    original = noise.noisy_latents

    def swapped(schedule, latents, *args, **kwargs):
        eps, x_t, t = original(schedule, latents, *args, **kwargs)
        return latents, x_t, t

    noise.noisy_latents = swapped
    try:
        yield
    finally:
        noise.noisy_latents = original


BREAKAGES = {"none": contextlib.nullcontext, "frozen_up": frozen_up, "no_text": no_text,
             "wrong_target": wrong_target}


def lesson_of(lora: Path):
    """:class:`sd_train.toy_lesson.Lesson` of a LoRA file on the toy SDXL model."""
    from sd_train.lora_preview import apply_lora, render
    from sd_train.toy_lesson import TOY_SDXL, lesson_prompts, measure

    family, models = TOY_SDXL.load()
    before = render(family, models, lesson_prompts())
    apply_lora(family, models, str(lora))
    return measure(before, render(family, models, lesson_prompts()))


def main() -> int:
    """Train and measure once per breakage; print one line each."""
    from sd_train.toy_lesson import STEPS, train_concept_lora
    from toykit import CONTROL_BAND, GAIN_MARGIN, failures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--only", nargs="*", default=list(BREAKAGES), choices=list(BREAKAGES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"test thresholds: gain >= {GAIN_MARGIN}, control change <= {CONTROL_BAND} levels")
    for name in args.only:
        with tempfile.TemporaryDirectory() as tmp, BREAKAGES[name]():
            with contextlib.redirect_stdout(sys.stderr):  # the trainer's plan and summary stay out of the table
                lora = train_concept_lora(tmp, args.steps)
            lesson = lesson_of(lora)
        failed = failures(lesson)
        print(f"{name:13s} {'FAIL: ' + '; '.join(failed) if failed else 'pass'} ({lesson})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
