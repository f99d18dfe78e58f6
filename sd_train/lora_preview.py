"""Before/after previews of a LoRA file: render prompts with the base checkpoint and with the LoRA applied
through its network plugin at a multiplier, then lay the images out as a labelled grid.

Used by the quickstart (its before/after grid), the learning tests and the convergence benchmark.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sd_train.network_host import NetworkHost
from sd_train.sampling import SamplePrompt, generate


def apply_lora(family, models, lora_path: str, multiplier: float = 1.0, module: str = "networks.lora"):
    """Patch ``models`` with the LoRA file at ``multiplier`` (inference only); returns the network, whose
    ``set_multiplier`` changes the weight and ``restore()`` (``networks.lora``) removes it."""
    tes = family.plugin_text_encoders(models)
    network, weights = NetworkHost.load(module).create_from_weights(multiplier, str(lora_path), models.vae, tes,
                                                                    models.unet, for_inference=True)
    network.apply_to(tes, models.unet, True, True)
    network.load_state_dict(weights, strict=False)
    network.eval()
    return network


@torch.no_grad()
def render(family, models, prompts: Sequence[SamplePrompt], sampler: str = "euler") -> list:
    """One PIL image per prompt (seeded by the prompt), CPU."""
    return [generate(family, models, p, sampler) for p in prompts]


def toy_prompt(text: str, seed: int, steps: int = 20, scale: float = 3.0) -> SamplePrompt:
    """A 64×64 prompt at the toy world's sampling settings (Euler, 20 steps, CFG 3)."""
    return SamplePrompt(text, width=64, height=64, seed=seed, sample_steps=steps, scale=scale)


def grid(rows: Sequence[Sequence], row_labels: Sequence[str], col_labels: Sequence[str], zoom: int = 2,
         label_width: int = 110, label_height: int = 28):
    """Images in a table with a label left of each row and above each column; cells enlarged ``zoom`` times
    (nearest neighbour, so pixels stay visible)."""
    from PIL import Image, ImageDraw

    cell = rows[0][0].width * zoom
    out = Image.new("RGB", (label_width + cell * len(col_labels), label_height + cell * len(rows)), "white")
    pen = ImageDraw.Draw(out)
    for j, text in enumerate(col_labels):
        for k, line in enumerate(text.split("\n")[:2]):
            pen.text((label_width + j * cell + 3, 2 + 12 * k), line, fill="black")
    for i, (label, images) in enumerate(zip(row_labels, rows)):
        y = label_height + i * cell
        for k, line in enumerate(label.split("\n")):
            pen.text((4, y + cell // 2 - 10 + 12 * k), line, fill="black")
        for j, image in enumerate(images):
            out.paste(image.resize((cell, cell), Image.NEAREST), (label_width + j * cell, y))
    return out
