"""Hugging Face Hub ids for ``--pretrained_model_name_or_path`` and ``--vae`` (TRAINING.md §2.1).

A value that is not an existing path but looks like ``owner/name`` is fetched once into the Hub cache
(``HF_HOME``; ``HF_HUB_OFFLINE=1`` uses the cache only) and the local snapshot folder is loaded like
any diffusers folder. Only the files the loaders read are downloaded: configs and the full-precision
``.safetensors`` weights, never ``.bin`` pickles, tokenizers (built offline) or fp16 variants.
This is the only place sd-train uses the network.
"""

from __future__ import annotations

import os
import re

from library.errors import UserError, first_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MODEL_FILES = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/config.json", "text_encoder/model.safetensors",
               "text_encoder_2/config.json", "text_encoder_2/model.safetensors"]
VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]


def is_hub_id(value: str) -> bool:
    """True for ``owner/name`` strings that are not an existing path (or a weights file name)."""
    return (not os.path.exists(value) and bool(_HUB_ID.match(value))
            and not value.lower().endswith(_WEIGHT_SUFFIXES))


def local_path(value: str, files: list[str]) -> str:
    """``value`` itself, or for a hub id the local snapshot folder holding ``files`` (downloaded once).

    Raises:
        UserError: the download fails (offline, unknown or gated repository) or brings no weights.
    """
    if not is_hub_id(value):
        return value
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(value, allow_patterns=files)
    except Exception as exc:  # network, auth and "not found" errors all end the same way
        raise UserError(f"{value}: not a local file or folder, and fetching it from the Hugging Face Hub failed "
                        f"({first_line(exc)}); pass a local .safetensors file or diffusers folder") from None
    found = [f for f in files if f.endswith(".safetensors") and os.path.isfile(os.path.join(folder, f))]
    if not found:
        raise UserError(f"{value}: the Hugging Face Hub repository has no diffusers .safetensors weights "
                        f"({', '.join(f for f in files if f.endswith('.safetensors'))}); download a single-file "
                        "checkpoint instead")
    return folder
