"""The trainer's text conditioning and UNet call (TRAINING.md §3), for training the toy base models.

``sd_train/families`` owns these for training; ``library`` may not import it, so this is the same recipe
built from the family description (:class:`library.models.families.FamilySpec`) and the same library
functions, and ``tests/learning/test_toy_world.py`` checks that both give identical tensors. An SGM-layout
UNet (SDXL) takes both encoders' ``hidden_states[-2]`` as context and TE2's projected pooled output plus the
size embeddings as ``y``; a diffusers-layout UNet (SD1/SD2) takes the encoder's ``last_hidden_state``.
"""

from __future__ import annotations

from typing import Sequence

import torch

TOY_SIZE = (64, 64, 0, 0, 64, 64)  # SDXL size conditioning of a 64 px picture: original h, w, crop, target h, w


class Conditioner:
    """Captions -> ``(context, pooled | None)`` and ``(x_t, t, context, pooled)`` -> predicted noise."""

    def __init__(self, spec):
        from library.text.conditioning import load_tokenizer

        self.spec = spec
        self.tokenizers = [load_tokenizer(slot.tokenizer, None) for slot in spec.text_encoders]

    def encode(self, text_encoders: Sequence[torch.nn.Module], captions: Sequence[str]):
        """``(context (B, 77, D), pooled (B, P) or None)`` of ``captions`` (75 tokens, no clip skip)."""
        from library.text.conditioning import encode_sdxl

        ids = [tok.tokenize(list(captions)) for tok in self.tokenizers]
        if not self.spec.sgm_unet:
            return text_encoders[0](ids[0]).last_hidden_state, None
        h1, h2, pooled = encode_sdxl(text_encoders, [i[:, None] for i in ids])
        return torch.cat([h1, h2], dim=2), pooled

    def predict(self, unet, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled) -> torch.Tensor:
        """The UNet's noise prediction (B, 4, h, w)."""
        if not self.spec.sgm_unet:
            return unet(x_t, t, encoder_hidden_states=context).sample
        from library.models.sdxl_unet import size_embedding

        sizes = torch.tensor([TOY_SIZE] * x_t.shape[0], dtype=torch.float32)
        return unet(x_t, t, context, torch.cat([pooled, size_embedding(sizes, unet.config.size_embed_dim)], dim=1))
