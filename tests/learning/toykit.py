"""Thresholds of the learning tests (measured, see ``test_toy_lora.py``) and the diffusers rendering helper."""

from __future__ import annotations

import numpy as np

# A LoRA "taught green" when the trigger images' green share rises by at least GAIN_MARGIN (mean of three
# seeds) while the control images move by at most CONTROL_BAND levels (mean absolute difference, 0-255).
GAIN_MARGIN = 0.10
CONTROL_BAND = 12.0


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
