"""Learning tests: a LoRA trained by sd-train teaches the toy SDXL model the colour it never saw.

The whole chain runs for real: captions -> tokens -> conditioning -> noise -> loss -> LoRA update -> saved
file -> loaded (networks.lora, diffusers' ``load_lora_weights``, ``resize_lora``, ``merge_lora``) -> a
different picture. The LoRA is the quickstart's (:func:`sd_train.toy_lesson.train_concept_lora`: 12 green
pictures captioned ``a sks <shape> on a <colour> background`` plus 18 regularization pictures, rank 4, AdamW
5e-3, min-SNR 5, seed 42, 160 steps); images are 64 px, Euler 20 steps, CFG 3, seeds 1-3
(:func:`sd_train.toy_lesson.lesson_prompts`). Thresholds live in ``toykit.py``.

Measured (torch 2.13 CPU; every number is deterministic for a given machine and torch build):

* networks.lora: trigger green share 0.000 -> 0.184 (gain +0.184, margin 0.10), control change 6.6 levels
  (band 12); diffusers ``load_lora_weights``: +0.181, 6.6 levels; weight 0: bit-identical to the base;
* ``resize_lora --new_rank 2``: gain +0.172, 94% of the rank-4 gain (test: at least 80%);
* ``merge_lora``: mean difference to the applied LoRA at most 0.01 levels per image (test: 0.5; fp16 weights);
* the same run's step-60 checkpoint: gain +0.026 (not yet taught); pivotal tuning (``<s0><s1>`` from
  ``blue``, ti_lr 1e-2) for 60 steps, through diffusers: gain +0.220, control 8.1 levels (taught in fewer
  steps).

Breakages (``python tests/learning/breakages.py``: the same recipe with one thing broken in the trainer):

* LoRA up-weights left out of the optimizer: gain +0.000, control change 0.0 -> fails the gain margin;
* every caption encoded as ``""`` (text ignored): gain +0.000, control change 4.3 -> fails the gain margin;
* loss regressing the clean latents instead of the noise: gain +0.000, control change 146.5 levels -> fails
  the gain margin and the control band.
"""

from __future__ import annotations

import numpy as np
import pytest

from sd_train.lora_preview import apply_lora, render, toy_prompt
from sd_train.toy_lesson import lesson_prompts, measure
from toykit import (GAIN_MARGIN, HALF_RANK_RETAINED, MERGE_MEAN_LEVELS, PIVOTAL_FLAGS, PIVOTAL_STEPS, PIVOTAL_TOKENS,
                    diffusers_images, failures, load_pivotal)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def lora_images(toy_sdxl, toy_lora) -> list:
    """The lesson prompts rendered with the LoRA applied through networks.lora (then removed again)."""
    family, models = toy_sdxl
    network = apply_lora(family, models, str(toy_lora))
    try:
        return render(family, models, lesson_prompts())
    finally:
        network.restore()


def _assert_taught(lesson) -> None:
    assert not failures(lesson), (failures(lesson), str(lesson))


def test_lora_teaches_the_held_out_colour(base_images, lora_images):
    """Green appears for the trigger prompt and the control prompt stays as it was (margins: module doc)."""
    _assert_taught(measure(base_images, lora_images))


def test_weight_zero_renders_the_base_image_exactly(toy_sdxl, toy_lora, base_images, lora_images):
    family, models = toy_sdxl
    network = apply_lora(family, models, str(toy_lora), multiplier=0.0)
    try:
        zero = render(family, models, lesson_prompts())
    finally:
        network.restore()
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(zero, base_images))
    assert not np.array_equal(np.asarray(lora_images[0]), np.asarray(base_images[0]))


def test_lora_file_teaches_through_diffusers_load_lora_weights(toy_sdxl, toy_lora, tmp_path):
    """The saved file, loaded by diffusers' own pipeline and loader, teaches the same lesson."""
    from library.checkpoint.pipelines import build_diffusers_pipeline

    pipe = build_diffusers_pipeline(toy_sdxl[1], tmp_path)
    before = diffusers_images(pipe, lesson_prompts())
    pipe.load_lora_weights(str(toy_lora))
    _assert_taught(measure(before, diffusers_images(pipe, lesson_prompts())))


def test_half_rank_resize_keeps_most_of_the_lesson(toy_sdxl, toy_lora, base_images, lora_images, tmp_path):
    from tools.resize_lora import main as resize_main

    half = tmp_path / "half.safetensors"
    assert resize_main(["--model", str(toy_lora), "--save_to", str(half), "--new_rank", "2"]) == 0
    family, models = toy_sdxl
    network = apply_lora(family, models, str(half))
    try:
        resized = measure(base_images, render(family, models, lesson_prompts()))
    finally:
        network.restore()
    full = measure(base_images, lora_images)
    assert resized.gain >= HALF_RANK_RETAINED * full.gain, (resized, full)
    _assert_taught(resized)


def test_merged_checkpoint_renders_like_the_applied_lora(toy_sdxl, toy_lora, lora_images, tmp_path):
    from sd_train.toy_lesson import TOY_SDXL
    from tools.merge_lora import main as merge_main

    merged = tmp_path / "merged.safetensors"
    assert merge_main(["--sd_model", str(TOY_SDXL.path), "--save_to", str(merged), "--models", str(toy_lora),
                       "--ratios", "1"]) == 0
    family = toy_sdxl[0]
    images = render(family, family.load(str(merged)), lesson_prompts())
    diffs = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)) for a, b in zip(images, lora_images)]
    assert max(d.mean() for d in diffs) <= MERGE_MEAN_LEVELS, [d.mean() for d in diffs]


def test_pivotal_tuning_teaches_in_fewer_steps(toy_sdxl, toy_lora, tmp_path):
    """After PIVOTAL_STEPS steps the plain LoRA (its checkpoint of that step) has not taught green yet; a pivotal
    run of that length has, with the trigger word replaced by its two new tokens (diffusers' loaders)."""
    from library.checkpoint.pipelines import build_diffusers_pipeline
    from sd_train.toy_lesson import train_concept_lora

    lora = train_concept_lora(tmp_path / "pivotal", PIVOTAL_STEPS, PIVOTAL_FLAGS)
    pipe = build_diffusers_pipeline(toy_sdxl[1], tmp_path)
    before = diffusers_images(pipe, lesson_prompts())
    pipe.load_lora_weights(str(toy_lora.with_name(f"toy_sks-step{PIVOTAL_STEPS:08d}.safetensors")))
    plain = measure(before, diffusers_images(pipe, lesson_prompts()))
    assert plain.gain < GAIN_MARGIN, plain
    pipe.unload_lora_weights()
    load_pivotal(pipe, lora, lora.with_name("toy_sks_emb.safetensors"))
    tokens = "".join(PIVOTAL_TOKENS)
    prompts = [toy_prompt(p.prompt.replace(" sks ", f" {tokens} "), p.seed) for p in lesson_prompts()]
    assert prompts[0].prompt == f"a {tokens} circle on a white background"
    _assert_taught(measure(before, diffusers_images(pipe, prompts)))

