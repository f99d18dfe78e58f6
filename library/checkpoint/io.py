"""Load and save SD1.x / SD2.x / SDXL checkpoints (single file or diffusers folder).

No second full-precision copy: modules are built on ``meta``, each tensor is read on its own (mapped, or
through one reused buffer when cast), cast to the target dtype/device and assigned with ``assign=True``.
``.ckpt``/``.pt`` only via ``torch.load(weights_only=True)``. Key layouts: FORMAT.md §10–11.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Iterable, Iterator

import torch

from library.checkpoint import convert as cc
from library.checkpoint.assemble import LoadedModels, assign_state, build_models, te_layers
from library.checkpoint.convert import configs_from_json, configs_to_json
from library.checkpoint.diffusers_folder import folder_family, load_diffusers_folder
from library.errors import UserError
from library.models.detect import family_of_checkpoint
from library.models.families import check_fits, default_configs
from library.io.safetensors_io import atomic_path, mapped_tensors, read_header, read_tensors, stored_dtypes

logger = logging.getLogger(__name__)
CONFIG_METADATA_KEY = cc.CONFIG_METADATA_KEY


def detect_family(keys: Iterable[str]) -> str:
    """Return ``"sdxl"``, ``"sd2"`` or ``"sd1"`` from single-file checkpoint keys
    (:func:`library.models.detect.family_of_checkpoint`).

    Raises:
        UserError: no known text-encoder prefix (not an SD checkpoint).
    """
    return family_of_checkpoint(keys)


def detect_path_family(path: str | os.PathLike) -> str:
    """Family of a checkpoint file or diffusers folder, read from its keys/configs without building models."""
    p = Path(path)
    if p.is_dir():
        return folder_family(p)
    return detect_family(open_tensors(p)[0])


def _iter_ckpt(path: Path) -> tuple[list[str], Iterator]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: this .ckpt needs pickled code to load; refusing "
                        "(convert it to .safetensors with a trusted tool)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this checkpoint ({exc.__class__.__name__}); re-download it") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a state dict checkpoint")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return list(sd), iter(sd.items())


def open_tensors(path: str | os.PathLike, mmap: bool = True, load_dtypes: set | None = None) -> tuple:
    """``(keys, metadata, lazy (key, tensor) iterator)`` of a ``.safetensors``/``.ckpt``/``.pt`` file."""
    return _open(path, mmap, load_dtypes)[:3]


def _open(path, mmap: bool, load_dtypes: set | None) -> tuple[list[str], dict[str, str], Iterator, bool]:
    """:func:`open_tensors` plus whether the tensors share one read buffer (a safetensors file not mapped,
    see :func:`maps_file`, with ``load_dtypes``): then copy or cast each before the next (``collect_states``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: checkpoint file not found")
    if p.suffix.lower() != ".safetensors":
        keys, it = _iter_ckpt(p)
        return keys, {}, it, False
    header, metadata = read_header(p)
    if maps_file(header, mmap, load_dtypes):
        return list(header), metadata, mapped_tensors(p), False
    shared = load_dtypes is not None
    return list(header), metadata, read_tensors(p, reuse_buffer=shared), shared


def maps_file(header: dict, mmap: bool, load_dtypes: set | None) -> bool:
    """Map only with ``mmap`` (not ``--disable_mmap_load_safetensors``) and no stored float dtype outside
    ``load_dtypes``: a cast copies every tensor anyway; mapped pages would add the file to the peak RSS."""
    return mmap and (load_dtypes is None or stored_dtypes(header) <= set(load_dtypes))


def _cast(t: torch.Tensor, dtype: torch.dtype, device, copy: bool = False) -> torch.Tensor:
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=copy)


def collect_states(family: str, items: Iterator, configs: dict, dtype, device, where: str, unet_dtype=None,
                   copy: bool = False):
    """Route every checkpoint tensor: ``(states per component, extras, unknown keys)``, cast to ``dtype``
    (UNet: ``unet_dtype`` when given); ``copy`` when the items share one read buffer."""
    states: dict[str, dict] = {"unet": {}, "vae": {}, **{f"te{i}": {} for i in range(len(configs["text_encoders"]))}}
    extras, unknown = {}, []
    lpb = configs["unet"]["layers_per_block"] if isinstance(configs["unet"], dict) else configs["unet"].num_res_blocks
    for key, value in items:
        r = cc.route_key(family, key, value, lpb, te_layers(configs))
        if r.kind == "param":
            to = unet_dtype if unet_dtype is not None and r.component == "unet" else dtype
            states[r.component].update((k, _cast(v, to, device, copy)) for k, v in r.pairs)
        elif r.kind == "extra":
            extras[r.key] = value.clone()  # a view would keep the whole memory-mapped file alive
        elif r.kind == "unknown":
            unknown.append(key)
    return states, extras, unknown


def _finish(mods: dict, states: dict, unknown: list, where: str) -> None:
    if unknown:
        logger.warning("%s: ignored %d unknown keys (%s)", where, len(unknown), ", ".join(unknown[:5]))
    for name in mods:
        if not states.get(name) and name == "vae":
            raise UserError(f"{where}: the checkpoint has no VAE (first_stage_model.*); pass one with --vae")
        assign_state(mods[name], states.get(name, {}), name, where)
    for m in mods.values():
        m.eval().requires_grad_(False)


def load_models(path: str | os.PathLike, *, expected_family: str | None = None, v2: bool = False,
                dtype: torch.dtype = torch.float32, device="cpu", vae_path=None, mmap: bool = True,
                unet_dtype: torch.dtype | None = None, script_attr: str = "trainer_script") -> LoadedModels:
    """Load UNet, text encoders and VAE from a single file or a diffusers folder.

    Args:
        path: ``.safetensors``, ``.ckpt``/``.pt`` or a diffusers folder.
        expected_family: ``None``, ``"sdxl"`` or ``"sd"``/``"sd1"``/``"sd2"``; a mismatch is a UserError
            naming the right script (or ``--v2``): the ``script_attr`` field of its family spec.
        v2: The user passed ``--v2``.
        dtype, device: Floating-point dtype and device of every weight.
        vae_path: Optional separate VAE file (LDM or diffusers names, with or without ``first_stage_model.``).
        mmap: Memory-map a ``.safetensors`` file when no tensor needs a cast (see :func:`maps_file`).
        unet_dtype: UNet weight dtype if not ``dtype`` (the trainer's compute dtype: no fp32 UNet copy).

    Raises:
        UserError: missing/corrupt/unsafe file, wrong family, or weights that do not fit.
    """
    p = Path(path)
    if p.is_dir():
        models = load_diffusers_folder(p, expected_family=expected_family, v2=v2, dtype=dtype, device=device,
                                       script_attr=script_attr)
        torch.nn.Module.to(models.unet, unet_dtype or dtype)  # diffusers' to() warns needlessly
    else:
        keys, metadata, items, shared = _open(p, mmap, {dtype, unet_dtype or dtype})
        family = detect_family(keys)
        check_fits(family, expected_family, v2, str(p), script_attr)
        configs = (configs_from_json(metadata[CONFIG_METADATA_KEY], str(p)) if CONFIG_METADATA_KEY in metadata
                   else {"family": family, **default_configs(family)})
        configs.pop("family")
        mods = build_models(family, configs)
        states, extras, unknown = collect_states(family, items, configs, dtype, device, str(p), unet_dtype, shared)
        unet_unknown = [k for k in unknown if k.startswith(cc.UNET_PREFIX)]
        if unet_unknown:
            raise UserError(f"{p}: {len(unet_unknown)} unexpected UNet keys ({', '.join(unet_unknown[:5])})")
        if vae_path is not None:
            states["vae"] = load_vae_state(vae_path, configs["vae"], dtype, device)
        _finish(mods, states, unknown, str(p))
        tes = [mods[f"te{i}"] for i in range(len(configs["text_encoders"]))]
        models = LoadedModels(family, mods["unet"], tes, mods["vae"], configs, extras, p)
    if vae_path is not None and p.is_dir():
        from library.models.vae import build_vae

        with torch.device("meta"):
            models.vae = build_vae(models.configs["vae"])
        assign_state(models.vae, load_vae_state(vae_path, models.configs["vae"], dtype, device), "vae", str(vae_path))
        models.vae.eval().requires_grad_(False)
    return models


def load_vae_state(path: str | os.PathLike, config: dict, dtype, device) -> dict[str, torch.Tensor]:
    """Read a standalone VAE (LDM or diffusers names, optional ``first_stage_model.`` prefix) as diffusers keys."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise UserError(f"{p}: no .safetensors VAE weights in this folder")
        p = files[0]
    _, _, items = open_tensors(p)
    levels = len(config["block_out_channels"])
    out = {}
    for k, v in items:
        k = k[len(cc.VAE_PREFIX):] if k.startswith(cc.VAE_PREFIX) else k
        if not k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            continue  # e.g. model_ema / loss weights in VAE training checkpoints
        diffusers_style = "_blocks." in k or "mid_block." in k or "conv_norm_out" in k
        pairs = {k: v}.items() if diffusers_style else cc.keymaps.vae_ldm_to_diffusers({k: v}, levels).items()
        out.update((kk, _cast(vv, dtype, device)) for kk, vv in pairs)
    return out


def single_file_state(models: LoadedModels, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``models`` in the single-file key layout (FORMAT.md §10), contiguous on the CPU; float tensors cast to
    ``dtype`` unless it is ``None``."""
    states = {"unet": models.unet.state_dict(), "vae": models.vae.state_dict()}
    states.update({f"te{i}": te.state_dict() for i, te in enumerate(models.text_encoders)})
    sd = cc.to_single_file(models.family, states, models.extras, te_layers(models.configs))
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in sd.items()}


def save_models(models: LoadedModels, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write ``models`` (from :func:`load_models`) atomically as ``.safetensors`` (configs in the
    ``sd_train.model_config`` metadata) or ``.ckpt`` (``{"state_dict": …}``); float tensors cast to
    ``dtype`` unless it is ``None``."""
    sd = single_file_state(models, dtype)
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={CONFIG_METADATA_KEY: configs_to_json(models.family, models.configs)})
        else:
            torch.save({"state_dict": sd}, tmp)
