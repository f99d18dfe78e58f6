"""SD1.x / SD2.x family: one CLIP text encoder and a diffusers ``UNet2DConditionModel``."""

from __future__ import annotations

from typing import Sequence

import torch

from library.text.conditioning import device_of, join_chunk_states, load_tokenizer
from sd_train.families.base import Conds, ModelFamily


class SdFamily(ModelFamily):
    """SD1 (CLIP-L) and SD2 (OpenCLIP-H, ``--v2``) training strategy.

    Text path (TRAINING.md §3.2): ``last_hidden_state``, or with ``--clip_skip n``
    ``hidden_states[-n]`` followed by the final LayerNorm. Latent scale 0.18215.
    """

    latent_scale = 0.18215  # kohya-compat: SD1/SD2 VAE scale factor
    bucket_step_multiple = 64

    @property
    def name(self) -> str:  # type: ignore[override]
        """``sd2`` with ``--v2``, else ``sd1``."""
        return "sd2" if self.v2 else "sd1"

    def _build_tokenizers(self) -> list:
        return [load_tokenizer("sd2" if self.v2 else "clip_l", self.tokenizer_cache_dir)]

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

    def base_model_version(self) -> str:
        """``sd_v1`` / ``sd_v2``, with ``_v`` under ``--v_parameterization`` (FORMAT.md §4)."""
        version = "sd_v2" if self.v2 else "sd_v1"
        return version + "_v" if self.v_parameterization else version

    def modelspec_architecture(self, v_param: bool) -> str:
        """``stable-diffusion-v1/lora``, ``…-v2-512/lora`` or ``…-v2-768-v/lora``."""
        if not self.v2:
            return "stable-diffusion-v1/lora"
        return "stable-diffusion-v2-768-v/lora" if v_param else "stable-diffusion-v2-512/lora"
