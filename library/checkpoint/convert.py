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

CONFIG_METADATA_KEY = "sd_train.model_config"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIXES = {
    "sd1": {"te0": "cond_stage_model.transformer."},
    "sd2": {"te0": "cond_stage_model.model."},
    "sdxl": {"te0": "conditioner.embedders.0.transformer.", "te1": "conditioner.embedders.1.model."},
}
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


def _route_te(family: str, comp: str, short: str, value: torch.Tensor, num_layers: int | None, key: str) -> Routed:
    if family == "sd1" or comp == "te0" and family == "sdxl":
        if not short.startswith("text_model.") and not short.startswith("text_projection"):
            short = "text_model." + short  # old SD1 files lack the ``text_model.`` level
        return Routed("param", comp, [(short, value)])
    if short == "logit_scale":
        return Routed("ignore") if family == "sd2" else Routed("extra", key=key)
    if family == "sd2" and short.startswith("text_projection"):
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
    if key.startswith(UNET_PREFIX):
        short = key[len(UNET_PREFIX):]
        if family != "sdxl":
            try:
                short = keymaps.unet_ldm_to_diffusers_key(short, unet_layers)
            except KeyError:
                return Routed("unknown", "unet", key=key)
        return Routed("param", "unet", [(short, value)])
    if key.startswith(VAE_PREFIX):
        return Routed("param", "vae", list(vae_ldm_pairs(key[len(VAE_PREFIX):], value)))
    for comp, prefix in TE_PREFIXES[family].items():
        if key.startswith(prefix):
            layers = (te_layers or {}).get(comp)
            return _route_te(family, comp, key[len(prefix):], value, layers, key)
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
    out = {}
    unet = states["unet"]
    if family == "sdxl":
        out.update({UNET_PREFIX + k: v for k, v in unet.items()})
    else:
        up_attn = {int(k.split(".")[1]) for k in unet if k.startswith("up_blocks.") and ".attentions." in k}
        out.update({UNET_PREFIX + keymaps.unet_diffusers_to_ldm_key(k, 2, up_attn): v for k, v in unet.items()})
    out.update(_te_single_file(family, states, te_layers or {}))
    out.update({VAE_PREFIX + k: v for k, v in keymaps.vae_diffusers_to_ldm(states["vae"]).items()})
    out.update(extras)
    if family == "sdxl" and TE_PREFIXES["sdxl"]["te1"] + "logit_scale" not in out:
        out[TE_PREFIXES["sdxl"]["te1"] + "logit_scale"] = torch.tensor(OPENCLIP_LOGIT_SCALE)
    return out


def _te_single_file(family: str, states, te_layers: Mapping[str, int]) -> dict:
    prefixes = TE_PREFIXES[family]
    if family == "sd1":
        return {prefixes["te0"] + k: v for k, v in states["te0"].items()}
    if family == "sd2":
        n = te_layers.get("te0") or _count_layers(states["te0"])
        out = keymaps.transformers_to_openclip(states["te0"], prefixes["te0"], pad_layers_to=n + 1,
                                               projection_placeholder=True)
        out[prefixes["te0"] + "logit_scale"] = torch.tensor(1.0)  # kohya-compat: placeholder
        return out
    out = {prefixes["te0"] + k: v for k, v in states["te0"].items()}
    out.update(keymaps.transformers_to_openclip(states["te1"], prefixes["te1"]))
    return out


def _count_layers(te_state: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[3]) for k in te_state if k.startswith("text_model.encoder.layers."))


def default_configs(family: str, v2_variant: str = "sd2") -> dict:
    """Full-size configs of a family: ``{"unet", "text_encoders", "vae"}``."""
    from library.models.sd_unet import sd_unet_config
    from library.models.sdxl_unet import SdxlUNetConfig
    from library.models.text_encoders import ClipTextConfig
    from library.models.vae import vae_config

    if family == "sdxl":
        return {"unet": SdxlUNetConfig.full(), "vae": vae_config(),
                "text_encoders": [ClipTextConfig.clip_l(), ClipTextConfig.openclip_bigg()]}
    te = ClipTextConfig.openclip_h() if family == "sd2" else ClipTextConfig.clip_l()
    return {"unet": sd_unet_config(v2_variant if family == "sd2" else "sd1"), "vae": vae_config(), "text_encoders": [te]}


def configs_to_json(family: str, configs: dict) -> str:
    """Serialize configs for the ``sd_train.model_config`` metadata key."""
    unet = configs["unet"] if isinstance(configs["unet"], dict) else configs["unet"].to_dict()
    return json.dumps({"family": family, "unet": unet, "vae": configs["vae"],
                       "text_encoders": [c.to_dict() for c in configs["text_encoders"]]}, sort_keys=True)


def configs_from_json(text: str, where: str) -> dict:
    """Inverse of :func:`configs_to_json`; returns ``{"family", "unet", "text_encoders", "vae"}``."""
    from library.models.sdxl_unet import SdxlUNetConfig
    from library.models.text_encoders import ClipTextConfig

    try:
        d = json.loads(text)
        unet = SdxlUNetConfig.from_dict(d["unet"]) if d["family"] == "sdxl" else dict(d["unet"])
        return {"family": d["family"], "unet": unet, "vae": dict(d["vae"]),
                "text_encoders": [ClipTextConfig.from_dict(c) for c in d["text_encoders"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where}: bad {CONFIG_METADATA_KEY} metadata ({exc}); re-create the file") from None
