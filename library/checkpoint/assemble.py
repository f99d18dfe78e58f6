"""What a loaded checkpoint is: :class:`LoadedModels`, its modules built on ``meta`` and filled with states.

Shared by the single-file loader (``io``) and the diffusers-folder loader (``diffusers_folder``), so
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import UserError
from library.models.families import family_spec


@dataclass
class LoadedModels:
    """The models of one checkpoint.

    Attributes:
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"``.
        unet: ``diffusers.UNet2DConditionModel`` (SD1/SD2) or ``SdxlUNet`` (SDXL).
        text_encoders: ``[CLIPTextModel]`` (SD1/SD2) or ``[CLIPTextModel, CLIPTextModelWithProjection]``.
        vae: ``diffusers.AutoencoderKL``.
        configs: ``{"unet": dict | SdxlUNetConfig, "text_encoders": [ClipTextConfig, …], "vae": dict}``.
        extras: Kept-aside tensors by checkpoint key (SDXL ``logit_scale``), written back on save.
        path: The file or folder loaded from.
    """

    family: str
    unet: torch.nn.Module
    text_encoders: list
    vae: torch.nn.Module
    configs: dict
    extras: dict = field(default_factory=dict)
    path: Path | None = None


def build_models(family: str, configs: dict) -> dict[str, torch.nn.Module]:
    """Build ``{"unet", "te0"[, "te1"], "vae"}`` on the ``meta`` device (no memory for weights)."""
    from library.models.text_encoders import CLIPTextModel, CLIPTextModelWithProjection
    from library.models.vae import build_vae

    with torch.device("meta"):
        mods = {"unet": family_spec(family).build_unet(configs["unet"]), "vae": build_vae(configs["vae"])}
        for i, cfg in enumerate(configs["text_encoders"]):
            cls = CLIPTextModelWithProjection if cfg.projection_dim else CLIPTextModel
            mods[f"te{i}"] = cls(cfg)
    return mods


def te_layers(configs: dict) -> dict[str, int]:
    """``{"te0": layers[, "te1": layers]}`` of the text-encoder configs."""
    return {f"te{i}": c.num_hidden_layers for i, c in enumerate(configs["text_encoders"])}


def assign_state(module: torch.nn.Module, state: dict, name: str, where: str) -> None:
    """``load_state_dict(assign=True)`` with one-line errors listing up to 5 missing/unexpected keys."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({', '.join(missing[:5])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])})" if unexpected else ""]
        raise UserError(f"{where}: {name} weights do not fit the model: {'; '.join(p for p in parts if p)}; "
                        "is this the right model family / a complete checkpoint?")
    module.load_state_dict(state, strict=True, assign=True)
