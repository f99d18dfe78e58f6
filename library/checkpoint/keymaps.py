"""Key maps between checkpoint layouts (FORMAT.md §9.2, §10).

* UNet: LDM/SGM names (``input_blocks.4.1.…``) ⇄ diffusers names (``down_blocks.1.attentions.0.…``),
  by rule from ``layers_per_block``, so tiny and full models use the same code. The full maps are
  generated from a model config by enumerating the real parameter names on the ``meta`` device.
* VAE: LDM ⇄ diffusers, including the mid-attention 1×1 conv ⇄ Linear reshape.
* Text encoders: OpenCLIP (fused ``in_proj``) ⇄ the transformers-4.x CLIP layout.

All functions are pure: they take and return plain dicts and never touch files.
"""

from __future__ import annotations

import re
from typing import Collection, Mapping

import torch

_UNET_TOP = (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"))
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_DIFFUSERS_RE = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID_RE = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_LDM_RE = re.compile(r"(input_blocks|output_blocks|middle_block)\.(\d+)\.(?:(\d+)\.)?(.+)")


def _swap_prefix(rest: str, pairs, reverse: bool = False) -> str:
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return rest


def unet_diffusers_to_ldm_key(key: str, layers_per_block: int = 2, up_attn: Collection[int] = ()) -> str:
    """Map one diffusers UNet key to its LDM/SGM name (FORMAT.md §9.2 table).

    Args:
        key: e.g. ``down_blocks.1.attentions.0.proj_in.weight``.
        layers_per_block: diffusers ``layers_per_block`` (2 in all SD models).
        up_attn: indices of up blocks that have attentions (decides the up-sampler's slot).

    Raises:
        KeyError: a key that is not a UNet parameter name.
    """
    s = layers_per_block + 1
    top = _swap_prefix(key, _UNET_TOP)
    if top != key:
        return top
    m = _MID_RE.fullmatch(key)
    if m:
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        return f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * i}.{_swap_prefix(rest, _RESNET)}"
    m = _DIFFUSERS_RE.fullmatch(key)
    if not m:
        raise KeyError(f"not a diffusers UNet key: {key}")
    side, b, kind, i, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    if side == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{s * (b + 1)}.0.op{rest[len('conv'):]}"
        n, j = 1 + s * b + i, 0 if kind == "resnets" else 1
        prefix = "input_blocks"
    else:
        if kind == "upsamplers":
            return f"output_blocks.{s * b + layers_per_block}.{2 if b in up_attn else 1}.{rest}"
        n, j, prefix = s * b + i, 0 if kind == "resnets" else 1, "output_blocks"
    return f"{prefix}.{n}.{j}.{_swap_prefix(rest, _RESNET) if j == 0 else rest}"


def unet_ldm_to_diffusers_key(key: str, layers_per_block: int = 2) -> str:
    """Map one LDM/SGM UNet key (without ``model.diffusion_model.``) to its diffusers name.

    Raises:
        KeyError: a key that is not a UNet parameter name.
    """
    s = layers_per_block + 1
    top = _swap_prefix(key, _UNET_TOP, reverse=True)
    if top != key:
        return top
    m = _LDM_RE.fullmatch(key)
    if not m or (m.group(1) != "middle_block" and m.group(3) is None):
        raise KeyError(f"not an LDM UNet key: {key}")
    where, n, rest = m.group(1), int(m.group(2)), m.group(4)
    if where == "middle_block":
        return (f"mid_block.attentions.0.{rest}" if n == 1
                else f"mid_block.resnets.{n // 2}.{_swap_prefix(rest, _RESNET, reverse=True)}")
    j = int(m.group(3))
    if where == "input_blocks":
        b, r = divmod(n - 1, s)
        if r == layers_per_block:
            return f"down_blocks.{b}.downsamplers.0.conv{rest[len('op'):]}"
        side = "down_blocks"
    else:
        b, r = divmod(n, s)
        if j == 2 or (j == 1 and rest.startswith("conv.")):
            return f"up_blocks.{b}.upsamplers.0.{rest}"
        side = "up_blocks"
    return (f"{side}.{b}.resnets.{r}.{_swap_prefix(rest, _RESNET, reverse=True)}" if j == 0
            else f"{side}.{b}.attentions.{r}.{rest}")


def _unet_keys_and_layers(config) -> tuple[list[str], int, bool]:
    """Parameter names of a UNet built on ``meta``: ``(keys, layers_per_block, keys_are_diffusers)``."""
    from library.models.sd_unet import build_sd_unet
    from library.models.sdxl_unet import SdxlUNet

    with torch.device("meta"):
        if isinstance(config, Mapping):
            return list(build_sd_unet(dict(config)).state_dict()), int(config.get("layers_per_block", 2)), True
        return list(SdxlUNet(config).state_dict()), int(config.num_res_blocks), False


def ldm_unet_to_diffusers_map(config) -> dict[str, str]:
    """``{ldm_key: diffusers_key}`` for every UNet parameter (keys without ``model.diffusion_model.``).

    Args:
        config: an SD UNet kwargs dict (:func:`library.models.sd_unet.sd_unet_config`) or an
            ``SdxlUNetConfig``; full and tiny configs both work.
    """
    keys, lpb, is_diffusers = _unet_keys_and_layers(config)
    if not is_diffusers:
        return {k: unet_ldm_to_diffusers_key(k, lpb) for k in keys}
    up_attn = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    return {unet_diffusers_to_ldm_key(k, lpb, up_attn): k for k in keys}


def diffusers_to_ldm_unet_map(config) -> dict[str, str]:
    """Inverse of :func:`ldm_unet_to_diffusers_map`: ``{diffusers_key: ldm_key}``."""
    return {d: ldm for ldm, d in ldm_unet_to_diffusers_map(config).items()}


# --- VAE (FORMAT.md §10.4) -------------------------------------------------------------------
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
_VAE_TOP = (("conv_norm_out", "norm_out"),)


def vae_diffusers_to_ldm_key(key: str, num_levels: int = 4) -> str:
    """Map one diffusers ``AutoencoderKL`` key to its LDM name (``decoder.up`` order reversed)."""
    key = key.replace(".conv_shortcut.", ".nin_shortcut.")
    m = re.fullmatch(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        part, side, i, kind, j, rest = m.groups()
        if side == "up_blocks":
            i = str(num_levels - 1 - int(i))
        name = "down" if side == "down_blocks" else "up"
        sub = f"block.{j}" if kind == "resnets" else f"{name}sample"
        return f"{part}.{name}.{i}.{sub}.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        part, kind, j, rest = m.groups()
        return (f"{part}.mid.block_{int(j) + 1}.{rest}" if kind == "resnets"
                else f"{part}.mid.attn_1.{_swap_prefix(rest, _VAE_ATTN)}")
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    return f"{m.group(1)}.{_swap_prefix(m.group(2), _VAE_TOP)}" if m else key


def vae_ldm_to_diffusers_key(key: str, num_levels: int = 4) -> str:
    """Map one LDM VAE key (without ``first_stage_model.``) to its diffusers name."""
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block\.\d+|downsample|upsample)\.(.+)", key)
    if m:
        part, name, i, kind, rest = m.groups()
        if name == "up":
            i = str(num_levels - 1 - int(i))
        side = "down_blocks" if name == "down" else "up_blocks"
        sub = f"resnets.{kind[len('block.'):]}" if kind.startswith("block.") else f"{kind}rs.0"
        return f"{part}.{side}.{i}.{sub}.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_\d|attn_1)\.(.+)", key)
    if m:
        part, kind, rest = m.groups()
        return (f"{part}.mid_block.attentions.0.{_swap_prefix(rest, _VAE_ATTN, reverse=True)}" if kind == "attn_1"
                else f"{part}.mid_block.resnets.{int(kind[-1]) - 1}.{rest}")
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    return f"{m.group(1)}.{_swap_prefix(m.group(2), _VAE_TOP, True)}" if m else key


def _is_vae_attn_weight(ldm_key: str) -> bool:
    return bool(re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", ldm_key))


def vae_diffusers_to_ldm(sd: Mapping[str, torch.Tensor], num_levels: int = 4) -> dict[str, torch.Tensor]:
    """Convert a diffusers VAE state dict to LDM names; mid-attention Linear ``(c, c)`` → conv ``(c, c, 1, 1)``."""
    pairs = ((vae_diffusers_to_ldm_key(k, num_levels), v) for k, v in sd.items())
    return {k: v.reshape(*v.shape, 1, 1) if _is_vae_attn_weight(k) and v.ndim == 2 else v for k, v in pairs}


def vae_ldm_to_diffusers(sd: Mapping[str, torch.Tensor], num_levels: int = 4) -> dict[str, torch.Tensor]:
    """Convert an LDM VAE state dict to diffusers names; mid-attention conv ``(c, c, 1, 1)`` → Linear ``(c, c)``."""
    return {vae_ldm_to_diffusers_key(k, num_levels): v.reshape(v.shape[:2]) if _is_vae_attn_weight(k) and v.ndim == 4
            else v for k, v in sd.items()}


# --- OpenCLIP text tower (FORMAT.md §10.2, §10.3) -------------------------------------------
_CLIP_TOP = (("token_embedding", "text_model.embeddings.token_embedding"),
             ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
             ("ln_final", "text_model.final_layer_norm"))
_CLIP_LAYER = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
               ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_RESBLOCK_RE = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_TF_LAYER_RE = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")


def openclip_key_to_transformers(key: str, value: torch.Tensor, num_layers: int | None = None):
    """Convert one OpenCLIP tensor (key without prefix) to ``[(transformers_key, tensor), …]``.

    ``in_proj_weight`` ``(3d, d)`` / ``in_proj_bias`` ``(3d,)`` split into q, k, v (in that order);
    ``text_projection`` ``P (d, proj)`` becomes ``text_projection.weight = Pᵀ``. Returns ``[]`` for
    layers ``>= num_layers`` and ``None`` for keys that are not part of the text model
    (``logit_scale`` and unknown keys), which the caller keeps aside or reports.
    """
    if key == "text_projection":
        return [("text_projection.weight", value.t().contiguous())]
    if key in ("text_projection.weight", "text_projection.weight.weight"):  # Playground-style files
        return [("text_projection.weight", value)]
    top = _swap_prefix(key, _CLIP_TOP)
    if top != key:
        return [(top, value)]
    m = _RESBLOCK_RE.fullmatch(key)
    if not m:
        return None
    i, rest = int(m.group(1)), m.group(2)
    if num_layers is not None and i >= num_layers:
        return []
    base = f"text_model.encoder.layers.{i}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        suffix = rest.rsplit("_", 1)[1]
        return [(f"{base}self_attn.{n}_proj.{suffix}", t.clone()) for n, t in zip("qkv", value.chunk(3, dim=0))]
    mapped = _swap_prefix(rest, _CLIP_LAYER)
    return [(base + mapped, value)] if mapped != rest else None


def openclip_to_transformers(sd: Mapping[str, torch.Tensor], prefix: str = "", num_layers: int | None = None,
                             keep_projection: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Convert the OpenCLIP keys under ``prefix`` to the transformers layout.

    Args:
        sd: State dict; keys not starting with ``prefix`` are ignored.
        prefix: e.g. ``"conditioner.embedders.1.model."``.
        num_layers: Keep only resblocks below this index (23 for SD2).
        keep_projection: False drops ``text_projection`` (SD2).

    Returns: ``(converted, extras)``; extras holds ``logit_scale`` and unknown keys (without prefix).
    """
    out, extras = {}, {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        short = k[len(prefix):]
        pairs = openclip_key_to_transformers(short, v, num_layers)
        if pairs is None:
            extras[short] = v
        out.update((n, t) for n, t in (pairs or []) if keep_projection or not n.startswith("text_projection"))
    return out, extras


def transformers_to_openclip(sd: Mapping[str, torch.Tensor], prefix: str = "", pad_layers_to: int | None = None,
                             projection_placeholder: bool = False) -> dict[str, torch.Tensor]:
    """Convert a transformers-layout CLIP text state dict back to OpenCLIP keys under ``prefix``.

    Args:
        sd: ``text_model.*`` (+ ``text_projection.weight``) tensors.
        pad_layers_to: Write copies of the last layer up to this many resblocks (SD2: 24).
        projection_placeholder: Write ``text_projection = ones(d, d)`` when the model has none (SD2).
    """
    out, qkv = {}, {}
    for k, v in sd.items():
        if k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
            continue
        m = _TF_LAYER_RE.fullmatch(k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            pm = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if pm:
                qkv.setdefault((i, pm.group(2)), {})[pm.group(1)] = v
                continue
            out[f"transformer.resblocks.{i}.{_swap_prefix(rest, _CLIP_LAYER, reverse=True)}"] = v
            continue
        mapped = _swap_prefix(k, _CLIP_TOP, reverse=True)
        if mapped == k:
            raise KeyError(f"not a CLIP text-model key: {k}")
        out[mapped] = v
    for (i, kind), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts[n] for n in "qkv"], dim=0)
    _pad_openclip(out, pad_layers_to, projection_placeholder)
    return {prefix + k: v for k, v in out.items()}


def _pad_openclip(out: dict, pad_layers_to: int | None, projection_placeholder: bool) -> None:
    layers = sorted({int(k.split(".")[2]) for k in out if k.startswith("transformer.resblocks.")})
    if pad_layers_to and layers:
        last = f"transformer.resblocks.{layers[-1]}."
        for i in range(layers[-1] + 1, pad_layers_to):  # kohya-compat: SD2 layer 23 = copy of layer 22
            out.update({f"transformer.resblocks.{i}." + k[len(last):]: v.clone() for k, v in list(out.items())
                        if k.startswith(last)})
    if projection_placeholder and "text_projection" not in out:
        d = out["ln_final.weight"].shape[0]
        out["text_projection"] = torch.ones(d, d, dtype=out["ln_final.weight"].dtype)  # kohya-compat: placeholder
