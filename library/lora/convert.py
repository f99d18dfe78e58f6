"""LoRA module names ⇄ diffusers/PEFT names and ⇄ checkpoint keys (FORMAT.md §9, §10; TOOLS.md §1, §6).

UNet names are never inverted by replacing underscores: every table is generated from real module
paths, either from a model config (``library.checkpoint.keymaps``, built on the ``meta`` device) or from the
keys of the checkpoint at hand. Text-encoder names follow a fixed grammar of six leaves per layer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Mapping

import torch

from library.errors import UserError
from library.models.detect import family_of_keys, family_of_lora
from library.models.families import FamilySpec, family_spec
from library.checkpoint.keymaps import ldm_unet_to_diffusers_map, unet_ldm_to_diffusers_key

TE_RE = re.compile(r"^(lora_te[12]?)_text_model_encoder_layers_(\d+)_(self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc1|mlp_fc2)$")
_TE_PATH_RE = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc1|mlp\.fc2)$")
_TE_LEAF = {"self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
            "self_attn_v_proj": "self_attn.v_proj", "self_attn_out_proj": "self_attn.out_proj",
            "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
_OPENCLIP_LEAF = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                  "mlp.c_proj.weight": "mlp_fc2"}
_QKV = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj")  # OpenCLIP in_proj row order
UNET_PREFIX = "model.diffusion_model."
PEFT_COMPONENT = {"lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}


def checkpoint_family(keys) -> str:
    """``sd1``, ``sd2`` or ``sdxl`` from single-file checkpoint keys (:func:`library.models.detect.family_of_keys`)."""
    return family_of_keys(keys)


def _unet_lora_name(ldm_path: str, spec: FamilySpec) -> tuple[str, str]:
    """``(kohya name, diffusers module path)`` of an LDM/SGM module path."""
    diffusers = unet_ldm_to_diffusers_key(ldm_path + ".weight")[: -len(".weight")]
    spelled = ldm_path if spec.sgm_unet else diffusers  # LoRAs spell the UNet as the model's modules do
    return "lora_unet_" + spelled.replace(".", "_"), diffusers


def is_network_target(diffusers_path: str, conv: bool) -> bool:
    """Would ``networks.lora`` put a module on this UNet leaf (NETWORKS.md §3)?"""
    if ".attentions." in diffusers_path:
        return True
    return conv and (".resnets." in diffusers_path or "samplers.0.conv" in diffusers_path)


def checkpoint_targets(shapes: Mapping[str, tuple], family: str, conv: bool = True,
                       aliases: bool = False) -> dict[str, tuple[str, int | None]]:
    """Map LoRA module names to ``(checkpoint key, in_proj chunk or None)`` from a checkpoint's keys.

    Args:
        shapes: checkpoint key -> shape (only Linear/Conv weights, ndim >= 2, become targets).
        family: ``sd1``, ``sd2`` or ``sdxl``.
        conv: include ResNet and sampler modules (LoCon targets), else only transformer leaves.
        aliases: SDXL: also accept diffusers-spelled UNet names (``lora_unet_down_blocks_…``).
    """
    spec = family_spec(family)
    out: dict[str, tuple[str, int | None]] = {}
    for key, shape in shapes.items():
        if len(shape) < 2 or not key.endswith("weight"):
            continue
        if key.startswith(UNET_PREFIX):
            try:
                name, diffusers = _unet_lora_name(key[len(UNET_PREFIX): -len(".weight")], spec)
            except KeyError:
                continue
            if is_network_target(diffusers, conv):
                out[name] = (key, None)
                if aliases and spec.sgm_unet:
                    out["lora_unet_" + diffusers.replace(".", "_")] = (key, None)
            continue
        for slot in spec.text_encoders:
            if key.startswith(slot.checkpoint_prefix):
                out.update(_te_targets(key, key[len(slot.checkpoint_prefix):], slot.lora_prefix, slot.openclip_keys))
    return out


def _te_targets(key: str, rest: str, lora_prefix: str, openclip: bool) -> dict[str, tuple[str, int | None]]:
    if not openclip:
        m = _TE_PATH_RE.match(rest[: -len(".weight")]) if rest.endswith(".weight") else None
        if not m or not rest.startswith("text_model."):
            return {}
        return {f"{lora_prefix}_text_model_encoder_layers_{m.group(1)}_{m.group(2).replace('.', '_')}": (key, None)}
    m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", rest)
    if not m:
        return {}
    base = f"{lora_prefix}_text_model_encoder_layers_{m.group(1)}_"
    if m.group(2) == "attn.in_proj_weight":
        return {base + leaf: (key, i) for i, leaf in enumerate(_QKV)}
    leaf = _OPENCLIP_LEAF.get(m.group(2))
    return {base + leaf: (key, None)} if leaf else {}


def unet_name_table(family: str, config=None) -> dict[str, str]:
    """``{kohya UNet module name: diffusers module path}`` for every weight of the family's UNet."""
    spec = family_spec(family)
    config = spec.full_configs()["unet"] if config is None else config
    table = {}
    for ldm, diffusers in ldm_unet_to_diffusers_map(config).items():
        if ldm.endswith(".weight"):
            path = (ldm if spec.sgm_unet else diffusers)[: -len(".weight")]
            table["lora_unet_" + path.replace(".", "_")] = diffusers[: -len(".weight")]
    return table


def te_name_set(family: str, layers: Mapping[str, int]) -> set[str]:
    """All text-encoder module names for ``{lora prefix: number of layers}``."""
    return {f"{p}_text_model_encoder_layers_{i}_{leaf}" for p, n in layers.items() for i in range(n) for leaf in _TE_LEAF}


def peft_name(name: str, unet_table: Mapping[str, str]) -> tuple[str, str]:
    """kohya module name -> ``(PEFT component, module path)``; TE paths start with ``text_model.``."""
    m = TE_RE.match(name)
    if m:
        return PEFT_COMPONENT[m.group(1)], f"text_model.encoder.layers.{m.group(2)}.{_TE_LEAF[m.group(3)]}"
    if name in unet_table:
        return "unet", unet_table[name]
    raise UserError(f"module {name} is not a module of this architecture; pass the right --arch")


def kohya_name(component: str, path: str, family: str, inverse_table: Mapping[str, str]) -> str:
    """PEFT ``(component, module path)`` -> kohya module name (inverse of :func:`peft_name`)."""
    if component == "unet":
        if path not in inverse_table:
            raise UserError(f"unet.{path} is not a {family} UNet module; pass the right --arch")
        return inverse_table[path]
    m = _TE_PATH_RE.match(path)
    if component not in ("text_encoder", "text_encoder_2") or not m:
        raise UserError(f"{component}.{path} is not a text-encoder LoRA module")
    prefixes = {slot.diffusers_folder: slot.lora_prefix for slot in family_spec(family).text_encoders}
    prefix = prefixes.get(component, "lora_te2")
    return f"{prefix}_text_model_encoder_layers_{m.group(1)}_{m.group(2).replace('.', '_')}"


def _pattern_key(component: str, path: str) -> str:
    return path[len("text_model."):] if component != "unet" and path.startswith("text_model.") else path


def adapter_metadata(entries: Mapping[str, list[tuple[str, int, float]]]) -> str:
    """``lora_adapter_metadata`` JSON from ``{component: [(path, rank, alpha), …]}`` (FORMAT.md §9.1)."""
    meta: dict = {}
    for comp, items in entries.items():
        r = Counter(i[1] for i in items).most_common(1)[0][0]
        a = Counter(i[2] for i in items).most_common(1)[0][0]
        keys = [(_pattern_key(comp, p), rk, al) for p, rk, al in items]
        meta.update({f"{comp}.r": r, f"{comp}.lora_alpha": a,
                     f"{comp}.target_modules": sorted(k for k, _, _ in keys),
                     f"{comp}.rank_pattern": {k: rk for k, rk, _ in keys if rk != r},
                     f"{comp}.alpha_pattern": {k: al for k, _, al in keys if al != a}})
    return json.dumps(meta)


def alpha_from_metadata(meta: Mapping, component: str, path: str, rank: int) -> float:
    """Alpha of a PEFT module: ``alpha_pattern`` wins over ``lora_alpha``; baked files give ``rank``."""
    pattern = meta.get(f"{component}.alpha_pattern") or {}
    key = _pattern_key(component, path)
    if key in pattern:
        return float(pattern[key])
    return float(meta.get(f"{component}.lora_alpha", rank))


def parse_peft_key(key: str) -> tuple[str, str, str] | None:
    """``unet.<path>.lora_A.weight`` (or old diffusers ``.lora.down.weight`` / ``.lora_linear_layer.down.weight``)
    -> ``(component, path, "down"|"up")``; None for other keys."""
    m = re.match(r"^(unet|text_encoder|text_encoder_2)\.(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|"
                 r"lora_linear_layer\.down|lora_linear_layer\.up)\.weight$", key)
    if not m:
        return None
    return m.group(1), m.group(2), "down" if m.group(3).endswith(("A", "down")) else "up"


def lora_family(names, shapes: Mapping[str, tuple] | None = None, metadata: Mapping[str, str] | None = None) -> str:
    """Guess ``sd1``/``sd2``/``sdxl`` of a LoRA (:func:`library.models.detect.family_of_lora`)."""
    return family_of_lora(names, shapes, metadata)


def to_family_names(names, family: str, unet_table: Mapping[str, str]) -> dict[str, str]:
    """Map diffusers-spelled SDXL UNet names (``lora_unet_down_blocks_…``) to SGM names; others unchanged."""
    if not family_spec(family).sgm_unet:
        return {n: n for n in names}
    by_diffusers = {"lora_unet_" + d.replace(".", "_"): k for k, d in unet_table.items()}
    return {n: (n if n in unet_table else by_diffusers.get(n, n)) for n in names}


def scaled_delta_rows(weight: torch.Tensor, chunk: int | None) -> slice:
    """Rows of ``weight`` a module writes: all, or chunk ``i`` of 3 of a fused OpenCLIP ``in_proj_weight``."""
    if chunk is None:
        return slice(0, weight.shape[0])
    d = weight.shape[0] // 3
    return slice(chunk * d, (chunk + 1) * d)


# --- Layer-block weights (kohya's LBW layouts for svd_merge_lora / sdxl_merge_lora) --------------
LBW_LENGTHS = (12, 17, 20, 26)  # 12 and 20 mean SDXL (kohya-compat)


def lbw_slots(n: int) -> list[int]:
    """Slots of the 26-slot layout (BASE, IN00…IN11, MID, OUT00…OUT11) that an ``n``-value list sets."""
    return {12: [0, 5, 6, 8, 9, 13, 14, 15, 16, 17, 18, 19],
            17: [0, 2, 3, 5, 6, 8, 9, 13, *range(17, 26)],
            20: [0, *range(1, 10), 13, *range(14, 23)],
            26: list(range(26))}[n]


def lbw_block_index(name: str, sdxl: bool) -> int:
    """LBW slot of a kohya module name: 0 for text encoders, IN/MID/OUT slots for the UNet, -1 if none."""
    if "text_model_encoder_" in name:
        return 0
    if sdxl:
        m = re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_", name)
        if not m:
            return -1
        return {"input_blocks": 1 + int(m.group(2)), "middle_block": 13, "output_blocks": 14 + int(m.group(2))}[m.group(1)]
    m = re.search(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_", name)
    if m:
        i, j, kind = int(m.group(2)), int(m.group(4)), m.group(3)
        if m.group(1) == "down":
            return 1 + (3 * (i + 1) if kind == "downsamplers" else 3 * i + j + 1)
        return 14 + (3 * i + 2 if kind == "upsamplers" else 3 * i + j)
    return 13 if "mid_block_" in name else -1


def lbw_weight(name: str, values: list[float] | None) -> float:
    """Multiplier of module ``name`` under one LoRA's LBW list (1.0 without a list or outside it)."""
    if not values:
        return 1.0
    slots = dict(zip(lbw_slots(len(values)), values))
    return float(slots.get(lbw_block_index(name, len(values) in (12, 20)), 1.0))
