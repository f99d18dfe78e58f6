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
from library.models.detect import family_of_folder
from library.models.families import check_fits, family_spec

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
    """Family name of a diffusers folder (:func:`library.models.detect.family_of_folder`)."""
    subfolders = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    family = family_of_folder(subfolders, lambda: _read_config(root / "text_encoder"))
    if family is None:
        raise UserError(f"{root}: not a diffusers model folder (needs unet/, text_encoder/, vae/ and model_index.json)")
    return family


def te_config_from_transformers(cfg: dict):
    """``ClipTextConfig`` from a transformers CLIP text ``config.json``."""
    from library.models.text_encoders import ClipTextConfig

    c = ClipTextConfig.from_dict(cfg)
    c.eos_token_id = _EOS  # sd-train: old SD1 configs say eos_token_id=2; pooling always uses 49407
    if "WithProjection" not in " ".join(cfg.get("architectures") or []):
        c.projection_dim = None
    return c


def load_diffusers_folder(root: Path, *, expected_family=None, v2=False, dtype=torch.float32, device="cpu",
                          script_attr: str = "trainer_script"):
    """Load ``root`` (a diffusers pipeline folder) as :class:`library.checkpoint.io.LoadedModels`
    (``expected_family``, ``v2``, ``script_attr``: see :func:`library.models.families.check_fits`)."""
    from safetensors import safe_open

    family = folder_family(root)
    check_fits(family, expected_family, v2, str(root), script_attr)
    spec = family_spec(family)
    ucfg = _read_config(root / "unet")
    te_dirs = [slot.diffusers_folder for slot in spec.text_encoders]
    configs = {"unet": spec.unet_config_from_diffusers(ucfg),
               "vae": {k: v for k, v in _read_config(root / "vae").items() if not k.startswith("_")},
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
                key = keymaps.unet_diffusers_to_ldm_key(k, lpb, up_attn) if name == "unet" and spec.sgm_unet else k
                t = f.get_tensor(k)
                state[key] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        assemble.assign_state(mods[name], state, name, str(root / sub))
    for m in mods.values():
        m.eval().requires_grad_(False)
    tes = [mods[f"te{i}"] for i in range(len(te_dirs))]
    return assemble.LoadedModels(family, mods["unet"], tes, mods["vae"], configs, {}, root)


def sdxl_config_to_diffusers(config) -> dict:
    """diffusers ``UNet2DConditionModel`` kwargs equivalent to an ``SdxlUNetConfig``."""
    return config.to_diffusers()
