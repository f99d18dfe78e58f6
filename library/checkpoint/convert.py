"""Single-file checkpoint keys ⇄ per-component state dicts (FORMAT.md §10).

Components are named ``"unet"``, ``"te0"``, ``"te1"`` (SDXL only) and ``"vae"``. Inside a
component, keys are the names of sd-train's modules: diffusers names for the SD1/SD2 UNet and the
VAE, SGM names for the SDXL UNet, the transformers-4.x layout for every text encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

import torch

from library.checkpoint import keymaps
from library.errors import UserError
from library.models.families import TextEncoderSlot, family_spec

CONFIG_METADATA_KEY = "sd_train.model_config"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# DDPM schedule buffers that LDM checkpoints carry; never used by training.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "model_ema.decay", "model_ema.num_updates",
})
OPENCLIP_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial value; written when a file had none


@dataclass
class Routed:
    """Where one checkpoint tensor goes.

    Attributes:
        kind: ``"param"`` (goes into ``component``), ``"extra"`` (kept aside under ``key``),
            ``"ignore"`` (known harmless) or ``"unknown"``.
        pairs: ``[(component_key, tensor), …]`` for ``"param"``.
    """

    kind: str
    component: str = ""
    pairs: list | None = None
    key: str = ""


def _is_ignored(key: str) -> bool:
    return key in SCHEDULE_BUFFERS or key.startswith("model_ema.") or key.endswith("position_ids")


def _route_te(slot: TextEncoderSlot, short: str, value: torch.Tensor, num_layers: int | None, key: str) -> Routed:
    comp = slot.component
    if not slot.openclip_keys:
        if not short.startswith("text_model.") and not short.startswith("text_projection"):
            short = "text_model." + short  # old SD1 files lack the ``text_model.`` level
        return Routed("param", comp, [(short, value)])
    if short == "logit_scale":
        return Routed("extra", key=key) if slot.keeps_logit_scale else Routed("ignore")
    if slot.placeholder_last_layer and short.startswith("text_projection"):
        return Routed("ignore")  # kohya-compat: SD2 drops text_projection (its model has none)
    pairs = keymaps.openclip_key_to_transformers(short, value, num_layers)
    if pairs is None:
        return Routed("unknown", comp, key=key)
    return Routed("param", comp, pairs) if pairs else Routed("ignore")


def route_key(family: str, key: str, value: torch.Tensor, unet_layers: int = 2,
              te_layers: Mapping[str, int] | None = None) -> Routed:
    """Decide where a single-file checkpoint tensor goes and convert its name/shape.

    Args:
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"``.
        key: The checkpoint key, e.g. ``model.diffusion_model.input_blocks.1.0.in_layers.0.weight``.
        value: The tensor (already cast, if the caller wants that).
        unet_layers: ``layers_per_block`` of the UNet (2).
        te_layers: OpenCLIP layers to keep per component (SD2: ``{"te0": 23}``).
    """
    if _is_ignored(key):
        return Routed("ignore")
    spec = family_spec(family)
    if key.startswith(UNET_PREFIX):
        short = key[len(UNET_PREFIX):]
        if not spec.sgm_unet:
            try:
                short = keymaps.unet_ldm_to_diffusers_key(short, unet_layers)
            except KeyError:
                return Routed("unknown", "unet", key=key)
        return Routed("param", "unet", [(short, value)])
    if key.startswith(VAE_PREFIX):
        return Routed("param", "vae", list(vae_ldm_pairs(key[len(VAE_PREFIX):], value)))
    for slot in spec.text_encoders:
        if key.startswith(slot.checkpoint_prefix):
            layers = (te_layers or {}).get(slot.component)
            return _route_te(slot, key[len(slot.checkpoint_prefix):], value, layers, key)
    return Routed("unknown", key=key)


def vae_ldm_pairs(ldm_key: str, value: torch.Tensor):
    """``[(diffusers_key, tensor)]`` for one LDM VAE tensor (mid attention conv → Linear)."""
    return keymaps.vae_ldm_to_diffusers({ldm_key: value}).items()


def to_single_file(family: str, states: Mapping[str, Mapping[str, torch.Tensor]],
                   extras: Mapping[str, torch.Tensor], te_layers: Mapping[str, int] | None = None) -> dict:
    """Build the single-file key layout from per-component state dicts.

    Args:
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"``.
        states: ``{"unet": …, "te0": …, ["te1": …], "vae": …}`` module state dicts.
        extras: Kept-aside tensors by checkpoint key (e.g. SDXL ``logit_scale``), written as is.
        te_layers: Text-encoder layer counts (SD2: ``{"te0": 23}``; used to write kohya's 24th layer).

    Returns:
        ``{checkpoint_key: tensor}``.
    """
    spec = family_spec(family)
    unet = states["unet"]
    if spec.sgm_unet:
        out = {UNET_PREFIX + k: v for k, v in unet.items()}
    else:
        up_attn = {int(k.split(".")[1]) for k in unet if k.startswith("up_blocks.") and ".attentions." in k}
        out = {UNET_PREFIX + keymaps.unet_diffusers_to_ldm_key(k, 2, up_attn): v for k, v in unet.items()}
    for slot in spec.text_encoders:
        out.update(_te_single_file(slot, states[slot.component], (te_layers or {}).get(slot.component)))
    out.update({VAE_PREFIX + k: v for k, v in keymaps.vae_diffusers_to_ldm(states["vae"]).items()})
    out.update(extras)
    for slot in spec.text_encoders:
        if slot.keeps_logit_scale and slot.checkpoint_prefix + "logit_scale" not in out:
            out[slot.checkpoint_prefix + "logit_scale"] = torch.tensor(OPENCLIP_LOGIT_SCALE)
    return out


def _te_single_file(slot: TextEncoderSlot, state: Mapping[str, torch.Tensor], layers: int | None) -> dict:
    prefix = slot.checkpoint_prefix
    if not slot.openclip_keys:
        return {prefix + k: v for k, v in state.items()}
    if not slot.placeholder_last_layer:
        return keymaps.transformers_to_openclip(state, prefix)
    n = layers or _count_layers(state)
    out = keymaps.transformers_to_openclip(state, prefix, pad_layers_to=n + 1, projection_placeholder=True)
    out[prefix + "logit_scale"] = torch.tensor(1.0)  # kohya-compat: placeholder
    return out


def _count_layers(te_state: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[3]) for k in te_state if k.startswith("text_model.encoder.layers."))


def configs_to_json(family: str, configs: dict) -> str:
    """Serialize configs for the ``sd_train.model_config`` metadata key."""
    unet = configs["unet"] if isinstance(configs["unet"], dict) else configs["unet"].to_dict()
    return json.dumps({"family": family, "unet": unet, "vae": configs["vae"],
                       "text_encoders": [c.to_dict() for c in configs["text_encoders"]]}, sort_keys=True)


def configs_from_json(text: str, where: str) -> dict:
    """Inverse of :func:`configs_to_json`; returns ``{"family", "unet", "text_encoders", "vae"}``."""
    from library.models.text_encoders import ClipTextConfig

    try:
        d = json.loads(text)
        unet = family_spec(d["family"]).unet_config_from_dict(d["unet"])
        return {"family": d["family"], "unet": unet, "vae": dict(d["vae"]),
                "text_encoders": [ClipTextConfig.from_dict(c) for c in d["text_encoders"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where}: bad {CONFIG_METADATA_KEY} metadata ({exc}); re-create the file") from None
