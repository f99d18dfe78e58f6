"""SDXL family: CLIP-L + OpenCLIP-bigG text encoders and the SGM-named SDXL UNet."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from library.text.prompt_weights import apply_token_weights
from library.models.families import SDXL
from library.models.sdxl_unet import size_embedding
from library.text.conditioning import encode_sdxl
from sd_train.families.base import Conds, ModelFamily

logger = logging.getLogger(__name__)


def size_values(batch: dict, batch_size: int) -> torch.Tensor:
    """(B, 6) size conditioning from a batch: original_hw, crop_top_left, target_hw.

    Missing keys default to the latent size × 8 and a (0, 0) crop.
    """
    latents = batch.get("latents")
    default = [0, 0] if latents is None else [latents.shape[-2] * 8, latents.shape[-1] * 8]
    parts = []
    for key, fallback in (("original_sizes_hw", default), ("crop_top_lefts", [0, 0]),
                          ("target_sizes_hw", default)):
        value = batch.get(key)
        value = torch.tensor([fallback] * batch_size) if value is None else torch.as_tensor(value)
        parts.append(value.reshape(batch_size, 2))
    return torch.cat(parts, dim=1)


class SdxlFamily(ModelFamily):
    """SDXL training strategy (TRAINING.md §3.3–3.4). Latent scale 0.13025."""

    entry = "sdxl"
    specs = (SDXL,)
    default_sampler = "euler_a"  # sd-train: kohya samples with ddim unless --sample_sampler is given
    uses_clip_skip = False
    takes_sdxl_only_flags = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.clip_skip is not None:
            logger.warning("--clip_skip is ignored for SDXL (TE1 and TE2 use their penultimate layer)")

    def encode(self, text_encoders: Sequence[torch.nn.Module], tokens: list[torch.Tensor]) -> Conds:
        """Encode ``[ids1, ids2]`` (each (B, n, 77)) into context (B, L, D1 + D2) and pooled (B, P).

        TE1 and TE2 give ``hidden_states[-2]`` without the final LayerNorm; pooled = TE2's
        ``text_embeds`` (projection at the first EOS) of the first chunk. ``--clip_skip`` is ignored.
        """
        h1, h2, pooled = encode_sdxl(text_encoders, tokens)
        return Conds(context=torch.cat([h1, h2.to(h1.dtype)], dim=2), pooled=pooled)

    def encode_weighted(self, text_encoders, tokens: list[torch.Tensor], weights: list[torch.Tensor]) -> Conds:
        """Like :meth:`encode`, with TE1 and TE2 states each multiplied by their (B, n, 77) token weights.

        The pooled output is not weighted (kohya-compat).
        """
        h1, h2, pooled = encode_sdxl(text_encoders, tokens)
        h1, h2 = apply_token_weights(h1, weights[0]), apply_token_weights(h2, weights[1])
        return Conds(context=torch.cat([h1, h2.to(h1.dtype)], dim=2), pooled=pooled)

    def _checkpoint_unet(self, unet: torch.nn.Module) -> None:
        """Turn on activation checkpointing in the SGM-named SDXL UNet (it checkpoints in train mode only)."""
        unet.set_gradient_checkpointing(True)
        unet.train()  # kohya-compat: kohya's unet.train() for checkpointing; the frozen UNet's dropout is 0

    def use_xformers(self, unet: torch.nn.Module) -> None:
        """``--xformers``: xformers attention in every ``CrossAttention`` (UserError when not installed)."""
        unet.set_attention_backend("xformers")

    def cache_outputs(self, text_encoders, captions: list[str]) -> tuple:
        """``(hidden1 (B, L, D1), hidden2 (B, L, D2), pool2 (B, P))`` for the TE-output cache."""
        conds = self.encode_captions(text_encoders, captions)  # kohya-compat: weighted when --weighted_captions
        d1 = text_encoders[0].config.hidden_size
        return conds.context[..., :d1].cpu(), conds.context[..., d1:].cpu(), conds.pooled.cpu()

    def cached_conds(self, outputs: tuple) -> Conds:
        """:class:`Conds` from cached ``(hidden1, hidden2, pool2)`` batch tensors."""
        hidden1, hidden2, pool2 = outputs
        return Conds(context=torch.cat([hidden1, hidden2], dim=2), pooled=pool2)

    def vector(self, conds: Conds, batch: dict, batch_size: int, dim: int = 256) -> torch.Tensor:
        """``y`` = [pooled, size embeddings] (B, P + 6·dim) for ``label_emb``; dim = 256 in SDXL."""
        sizes = size_values(batch, batch_size).to(conds.pooled.device)
        emb = size_embedding(sizes, dim).to(conds.pooled.dtype)
        return torch.cat([conds.pooled, emb], dim=1)

    def predict(self, unet, x_t, t, conds, batch) -> torch.Tensor:
        """``unet(x_t, t, context, y)`` with the size-conditioned vector; (B, 4, h, w)."""
        y = self.vector(conds, batch, x_t.shape[0], unet.config.size_embed_dim).to(x_t.dtype)
        return unet(x_t, t, conds.context.to(x_t.dtype), y)
