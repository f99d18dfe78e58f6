"""Load a diffusers-format model folder (FORMAT.md §11) into sd-train's modules.

Configs come from each component's ``config.json``; the SDXL UNet is converted from diffusers to
SGM names (§9.2) and loaded into ``SdxlUNet``. Weights must be ``.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from library.checkpoint import assemble, keymaps
from library.errors import UserError

_EOS = 49407


def _read_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        raise UserError(f"{folder}: missing config.json; is this a complete diffusers model folder?")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{f}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _weights_file(folder: Path) -> Path:
    names = ("diffusion_pytorch_model.safetensors", "model.safetensors",
             "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors")
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise UserError(f"{folder}: no .safetensors weights ({' / '.join(names[:2])}); convert .bin files first")


def folder_family(root: Path) -> str:
    """``"sdxl"`` (has ``text_encoder_2``), ``"sd2"`` (OpenCLIP text encoder: gelu, or 1024 wide) or ``"sd1"``."""
    if (root / "text_encoder_2").is_dir():
        return "sdxl"
    if not (root / "unet").is_dir() or not (root / "text_encoder").is_dir():
        raise UserError(f"{root}: not a diffusers model folder (needs unet/, text_encoder/, vae/ and model_index.json)")
    te = _read_config(root / "text_encoder")
    return "sd2" if te.get("hidden_size") == 1024 or te.get("hidden_act") == "gelu" else "sd1"


def sdxl_config_from_diffusers(cfg: dict):
    """``SdxlUNetConfig`` from a diffusers SDXL ``unet/config.json``."""
    from library.models.sdxl_unet import SdxlUNetConfig

    chans = list(cfg["block_out_channels"])
    depth = cfg.get("transformer_layers_per_block", 1)
    depth = [depth] * len(chans) if isinstance(depth, int) else list(depth)
    depth = [d if t.startswith("CrossAttn") else 0 for d, t in zip(depth, cfg["down_block_types"])]
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    heads = [heads] * len(chans) if isinstance(heads, int) else list(heads)
    return SdxlUNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4), model_channels=chans[0],
        channel_mult=tuple(c // chans[0] for c in chans), num_res_blocks=cfg.get("layers_per_block", 2),
        transformer_depth=tuple(depth), transformer_depth_middle=max(depth),
        num_head_channels=chans[-1] // heads[-1], context_dim=cfg["cross_attention_dim"],
        adm_in_channels=cfg["projection_class_embeddings_input_dim"],
        size_embed_dim=cfg.get("addition_time_embed_dim", 256), norm_num_groups=cfg.get("norm_num_groups", 32))


def te_config_from_transformers(cfg: dict):
    """``ClipTextConfig`` from a transformers CLIP text ``config.json``."""
    from library.models.text_encoders import ClipTextConfig

    c = ClipTextConfig.from_dict(cfg)
    c.eos_token_id = _EOS  # sd-train: old SD1 configs say eos_token_id=2; pooling always uses 49407
    if "WithProjection" not in " ".join(cfg.get("architectures") or []):
        c.projection_dim = None
    return c


def _kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def load_diffusers_folder(root: Path, *, expected_family=None, v2=False, dtype=torch.float32, device="cpu"):
    """Load ``root`` (a diffusers pipeline folder) as :class:`library.checkpoint.io.LoadedModels`."""
    from safetensors import safe_open

    family = folder_family(root)
    assemble.check_family(family, expected_family, v2, str(root))
    ucfg = _read_config(root / "unet")
    te_dirs = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    configs = {"unet": sdxl_config_from_diffusers(ucfg) if family == "sdxl" else _kwargs(ucfg),
               "vae": _kwargs(_read_config(root / "vae")),
               "text_encoders": [te_config_from_transformers(_read_config(root / d)) for d in te_dirs]}
    mods = assemble.build_models(family, configs)
    up_attn = {i for i, t in enumerate(ucfg.get("up_block_types", [])) if t.startswith("CrossAttn")}
    lpb = ucfg.get("layers_per_block", 2)
    for name, sub in [("unet", "unet"), ("vae", "vae")] + [(f"te{i}", d) for i, d in enumerate(te_dirs)]:
        state = {}
        with safe_open(str(_weights_file(root / sub)), framework="pt", device="cpu") as f:
            for k in f.keys():
                if k.endswith("position_ids"):
                    continue
                key = keymaps.unet_diffusers_to_ldm_key(k, lpb, up_attn) if name == "unet" and family == "sdxl" else k
                t = f.get_tensor(k)
                state[key] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        assemble.assign_state(mods[name], state, name, str(root / sub))
    for m in mods.values():
        m.eval().requires_grad_(False)
    tes = [mods[f"te{i}"] for i in range(len(te_dirs))]
    return assemble.LoadedModels(family, mods["unet"], tes, mods["vae"], configs, {}, root)


def sdxl_config_to_diffusers(config) -> dict:
    """diffusers ``UNet2DConditionModel`` kwargs equivalent to an ``SdxlUNetConfig`` (inverse of the above)."""
    chans = [config.model_channels * m for m in config.channel_mult]
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in config.transformer_depth]
    return {"in_channels": config.in_channels, "out_channels": config.out_channels, "block_out_channels": chans,
            "down_block_types": down, "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
            "layers_per_block": config.num_res_blocks, "transformer_layers_per_block": list(config.transformer_depth),
            "attention_head_dim": [c // config.num_head_channels for c in chans],
            "cross_attention_dim": config.context_dim, "use_linear_projection": True,
            "addition_embed_type": "text_time", "addition_time_embed_dim": config.size_embed_dim,
            "projection_class_embeddings_input_dim": config.adm_in_channels,
            "norm_num_groups": config.norm_num_groups}
