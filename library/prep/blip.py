"""BLIP image captioning through transformers (``BlipForConditionalGeneration`` + ``BlipProcessor``).

Generation follows kohya's ``finetune/make_captions.py`` (its BLIP is the same model as the
transformers port ``Salesforce/blip-image-captioning-large``): the decoder is started with the prompt
``a picture of `` and the prompt is cut from the text; nucleus sampling (``top_p``, repetition penalty
1.1) unless beam search is asked for; ``max_length`` / ``min_length`` count the prompt tokens too.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from library.errors import UserError, first_line

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"  # transformers port of kohya's model_large_caption.pth
PROMPT = "a picture of "  # kohya-compat: BLIP's captioning prompt, removed from the output
SAMPLING_REPETITION_PENALTY = 1.1  # kohya-compat: fixed for nucleus sampling


def load_blip(model: str, device: torch.device):
    """``(processor, model)`` from a local folder or a hub id (transformers' cache; offline: cache only).

    Raises:
        UserError: a ``.pth``/``.pt`` file (kohya's original weights are pickles, never loaded), or a folder
            / hub id transformers cannot load (one line saying what to download where).
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if model.lower().endswith((".pth", ".pt", ".ckpt", ".bin")) or "://" in model:
        raise UserError(f"--caption_weights {model}: sd-train loads transformers BLIP folders or hub ids, not "
                        f"pickled .pth weights; use {DEFAULT_MODEL} (the same model) or a folder saved from it")
    try:
        processor = BlipProcessor.from_pretrained(model)
        net = BlipForConditionalGeneration.from_pretrained(model, use_safetensors=None)
    except (OSError, ValueError) as exc:
        where = f"the folder {model}" if os.path.isdir(model) else f"the hub repository {model}"
        raise UserError(f"cannot load BLIP from {where} ({first_line(exc)}); download {DEFAULT_MODEL} with its "
                        "processor files (config.json, model weights, preprocessor_config.json, tokenizer files) "
                        "into a folder and pass that folder") from None
    return processor, net.to(device).eval()


def generation_kwargs(beam_search: bool, num_beams: int, top_p: float, max_length: int, min_length: int) -> dict:
    """``generate()`` arguments of kohya's two modes (beam search or nucleus sampling)."""
    common = {"max_length": max_length, "min_length": min_length}
    if beam_search:
        return {**common, "num_beams": num_beams, "do_sample": False, "repetition_penalty": 1.0}
    return {**common, "do_sample": True, "top_p": top_p, "repetition_penalty": SAMPLING_REPETITION_PENALTY}


@torch.no_grad()
def caption_batch(processor, model, images: list[np.ndarray], kwargs: dict) -> list[str]:
    """Captions of RGB ``(H, W, 3)`` uint8 images (resized and normalized by the processor)."""
    device = next(model.parameters()).device
    inputs = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt").to(device)
    out = model.generate(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], **kwargs)
    texts = processor.batch_decode(out, skip_special_tokens=True)
    return [t[len(PROMPT):].strip() if t.startswith(PROMPT.strip()) else t.strip() for t in texts]
