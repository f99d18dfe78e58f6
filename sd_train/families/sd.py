"""SD1.x / SD2.x family: one CLIP text encoder and a diffusers ``UNet2DConditionModel``."""

from __future__ import annotations

from typing import Sequence

import torch

from library.models.families import SD1, SD2
from library.text.conditioning import device_of, join_chunk_states
from sd_train.families.base import Conds, ModelFamily


class SdFamily(ModelFamily):
    """SD1 (CLIP-L) and SD2 (OpenCLIP-H, ``--v2``) training strategy.

    Text path (TRAINING.md §3.2): ``last_hidden_state``, or with ``--clip_skip n``
    ``hidden_states[-n]`` followed by the final LayerNorm. Latent scale 0.18215.
    """

    entry = "sd"
    specs = (SD1, SD2)  # --v2 picks SD2

    def encode(self, text_encoders: Sequence[torch.nn.Module], tokens: list[torch.Tensor]) -> Conds:
        """Encode (B, n, 77) tokens into a (B, 77|152|227, D) context.

        Args:
            text_encoders: ``[te]``.
            tokens: ``[ids]`` from :meth:`tokenize`.
        """
        te, ids = text_encoders[0], tokens[0]
        batch = ids.shape[0]
        flat = ids.reshape(-1, ids.shape[-1]).to(device_of(te))
        if self.clip_skip is None or self.clip_skip <= 1:
            states = te(flat).last_hidden_state
        else:
            out = te(flat, output_hidden_states=True)
            states = te.text_model.final_layer_norm(out.hidden_states[-self.clip_skip])
        return Conds(context=join_chunk_states(states, batch))

    def predict(self, unet, x_t, t, conds, batch) -> torch.Tensor:
        """Run the diffusers UNet: ``unet(x_t, t, context).sample``, (B, 4, h, w)."""
        return unet(x_t, t, conds.context).sample
