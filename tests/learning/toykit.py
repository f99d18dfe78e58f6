"""Thresholds of the learning tests (measured, see ``test_toy_lora.py``) and the diffusers rendering helpers."""

from __future__ import annotations

import numpy as np

from library.toyworld import world

# A LoRA "taught green" when the trigger images' green share rises by at least GAIN_MARGIN (mean of three
# seeds) while the control images move by at most CONTROL_BAND levels (mean absolute difference, 0-255).
GAIN_MARGIN = 0.10
CONTROL_BAND = 12.0
GREEN_LIMIT = 0.01  # most green the base's trigger images and the LoRA's control images may show
HALF_RANK_RETAINED = 0.8  # resize_lora to rank 2 keeps at least this share of the rank-4 gain
MERGE_MEAN_LEVELS = 0.5  # merged checkpoint vs LoRA applied: mean absolute difference per image, 0-255
PIVOTAL_STEPS = 60  # pivotal tuning is taught by then; the plain LoRA is not
PIVOTAL_TOKENS = ["<s0>", "<s1>"]  # what --token_abstraction sks --num_new_tokens_per_abstraction 2 adds
# The new tokens start from "blue" (a colour word the base knows) and train for the whole run.
PIVOTAL_FLAGS = ("--train_text_encoder_ti", "--token_abstraction", world.TRIGGER, "--num_new_tokens_per_abstraction",
                 "2", "--initializer_concept", "blue", "--ti_lr", "1e-2", "--train_text_encoder_ti_frac", "1")


def failures(lesson) -> list[str]:
    """The lesson checks that ``lesson`` (:class:`sd_train.toy_lesson.Lesson`) fails; empty when it was taught."""
    checks = {f"base draws green ({lesson.trigger_before:.3f} > {GREEN_LIMIT})": lesson.trigger_before <= GREEN_LIMIT,
              f"gain {lesson.gain:+.3f} < {GAIN_MARGIN}": lesson.gain >= GAIN_MARGIN,
              f"control turns green ({lesson.control_after:.3f} > {GREEN_LIMIT})": lesson.control_after <= GREEN_LIMIT,
              f"control change {lesson.control_change:.1f} > {CONTROL_BAND}": lesson.control_change <= CONTROL_BAND}
    return [text for text, ok in checks.items() if not ok]


def diffusers_images(pipe, prompts) -> list:
    """Render :class:`sd_train.sampling.SamplePrompt` s with a diffusers pipeline at the toy settings (its own
    Euler scheduler, empty negative prompt as in training's caption dropout); PIL images."""
    import torch
    from PIL import Image

    out = []
    for p in prompts:
        result = pipe(p.prompt, negative_prompt="", num_inference_steps=p.sample_steps, guidance_scale=p.scale,
                      height=p.height, width=p.width, output_type="np",
                      generator=torch.Generator().manual_seed(p.seed))
        out.append(Image.fromarray((np.clip(result.images[0], 0, 1) * 255).round().astype(np.uint8)))
    return out


def load_pivotal(pipe, lora, embedding) -> None:
    """diffusers' recipe for a pivotal-tuning result: the LoRA, then the new tokens' rows in each text encoder."""
    from safetensors.torch import load_file

    rows = load_file(str(embedding))
    pipe.load_lora_weights(str(lora))
    pipe.load_textual_inversion(rows["clip_l"], token=PIVOTAL_TOKENS, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(rows["clip_g"], token=PIVOTAL_TOKENS, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
