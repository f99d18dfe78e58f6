"""Write loaded models as a diffusers pipeline folder (FORMAT.md §11), offline.

Every config comes from sd-train's own config objects (nothing from the Hub): the SD1/SD2 UNet and
the VAE from their diffusers modules, the SDXL UNet from :func:`sdxl_config_to_diffusers`, the
text encoders from :class:`ClipTextConfig`, the tokenizers from the built-in CLIP vocabulary.
Text encoders keep the ``text_model.…`` key layout, which transformers 4.x and 5.x both load into
``CLIPTextModel`` / ``CLIPTextModelWithProjection``. The folder is written next to its final
place and renamed into it, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from library.checkpoint import keymaps
from library.errors import UserError
from library.models.families import family_spec

BETA_START, BETA_END = 0.00085, 0.012


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _weights_name(stem: str, variant: str | None) -> str:
    return f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"


def _save_tensors(state: dict, path: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
           for k, v in state.items()}
    save_file(out, str(path), metadata={"format": "pt"})


def _diffusers_config(module, class_name: str, **overrides) -> dict:
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in module.config.items() if not k.startswith("_")}
    cfg.update(overrides)
    return {"_class_name": class_name, "_diffusers_version": _version("diffusers"), **cfg}


def sdxl_unet_diffusers_state(unet) -> tuple[dict, dict]:
    """Convert an ``SdxlUNet`` to diffusers: ``(config.json dict, state dict with diffusers keys)``.

    Raises:
        UserError: the converted keys do not equal those of the diffusers model of the same config.
    """
    from diffusers import UNet2DConditionModel

    kwargs = unet.config.to_diffusers()
    kwargs.setdefault("sample_size", 128)
    with torch.device("meta"):
        ref = UNet2DConditionModel(**kwargs)
    names = keymaps.ldm_unet_to_diffusers_map(unet.config)
    state = {names[k]: v for k, v in unet.state_dict().items()}
    if set(state) != set(ref.state_dict()):
        diff = sorted(set(state) ^ set(ref.state_dict()))
        raise UserError(f"SDXL UNet: {len(diff)} keys do not map to diffusers ({', '.join(diff[:5])})")
    return _diffusers_config(ref, "UNet2DConditionModel"), state


def te_transformers_config(config, dtype: torch.dtype, pad_token_id: int) -> dict:
    """transformers ``config.json`` of a text encoder described by a ``ClipTextConfig``.

    Args:
        config: The ``ClipTextConfig``; ``projection_dim`` set means ``CLIPTextModelWithProjection``.
        dtype: Dtype of the written weights (recorded as ``torch_dtype``).
        pad_token_id: 49407 (CLIP-L) or 0 (OpenCLIP ``"!"``).
    """
    with_proj = config.projection_dim is not None
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_proj else "CLIPTextModel"],
        "model_type": "clip_text_model", "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": config.hidden_act, "layer_norm_eps": config.layer_norm_eps,
        "projection_dim": config.projection_dim if with_proj else config.hidden_size,
        "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "bos_token_id": 49406, "eos_token_id": config.eos_token_id, "pad_token_id": pad_token_id,
        "torch_dtype": str(dtype).replace("torch.", ""),
        "transformers_version": _version("transformers"),
    }


def write_tokenizer(folder: Path, pad_token: str) -> None:
    """Write a transformers ``CLIPTokenizer`` folder from the built-in vocabulary.

    Args:
        folder: Output folder (created).
        pad_token: ``"<|endoftext|>"`` (CLIP-L) or ``"!"`` (OpenCLIP: SD2, SDXL ``tokenizer_2``).
    """
    from library.text.tokenizer import BOS_TOKEN, EOS_TOKEN, builtin_vocabulary

    vocab, merges = builtin_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", {
        **specials, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True})


def scheduler_config(family: str, prediction_type: str) -> tuple[str, dict]:
    """``(class name, scheduler_config.json dict)``: the family's scheduler (EulerDiscrete for SDXL), else PNDM,
    or DDIM for v-prediction."""
    common = {"num_train_timesteps": 1000, "beta_start": BETA_START, "beta_end": BETA_END,
              "beta_schedule": "scaled_linear", "prediction_type": prediction_type, "steps_offset": 1,
              "trained_betas": None, "_diffusers_version": _version("diffusers")}
    name = family_spec(family).scheduler or ("DDIMScheduler" if prediction_type == "v_prediction" else "PNDMScheduler")
    return name, {**common, "_class_name": name, **_SCHEDULER_EXTRAS[name]}


_SCHEDULER_EXTRAS = {
    "EulerDiscreteScheduler": {"interpolation_type": "linear", "timestep_spacing": "leading",
                               "use_karras_sigmas": False},
    "DDIMScheduler": {"clip_sample": False, "set_alpha_to_one": False},
    "PNDMScheduler": {"skip_prk_steps": True, "set_alpha_to_one": False},
}


def default_prediction_type(models) -> str:
    """``"v_prediction"`` for the 768-px SD2 UNet (``sample_size`` 96), else ``"epsilon"``."""
    return family_spec(models.family).default_prediction_type(models.configs["unet"])


def _model_index(family: str, scheduler: str) -> dict:
    spec = family_spec(family)
    index = {"_diffusers_version": _version("diffusers"), "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler],
             "_class_name": spec.pipeline, **spec.pipeline_index}
    for i, _ in enumerate(spec.text_encoders):
        suffix = f"_{i + 1}" if i else ""
        index[f"text_encoder{suffix}"] = ["transformers", "CLIPTextModelWithProjection" if i else "CLIPTextModel"]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    return index


def _write_components(models, root: Path, variant: str | None, dtype, prediction_type: str) -> None:
    family, spec = models.family, family_spec(models.family)
    if spec.sgm_unet:
        unet_cfg, unet_state = sdxl_unet_diffusers_state(models.unet)
    else:
        unet_cfg, unet_state = _diffusers_config(models.unet, "UNet2DConditionModel"), models.unet.state_dict()
    _write_json(root / "unet" / "config.json", unet_cfg)
    _save_tensors(unet_state, root / "unet" / _weights_name("diffusion_pytorch_model", variant), dtype)
    _write_json(root / "vae" / "config.json",
                _diffusers_config(models.vae, "AutoencoderKL", scaling_factor=spec.vae_scale))
    _save_tensors(models.vae.state_dict(), root / "vae" / _weights_name("diffusion_pytorch_model", variant), dtype)
    pads = [slot.pad_token for slot in spec.text_encoders]
    for i, (te, pad) in enumerate(zip(models.text_encoders, pads)):
        suffix = f"_{i + 1}" if i else ""
        pad_id = 0 if pad == "!" else 49407
        te_cfg = te_transformers_config(te.config, dtype or te.dtype, pad_id)
        _write_json(root / f"text_encoder{suffix}" / "config.json", te_cfg)
        _save_tensors(te.state_dict(), root / f"text_encoder{suffix}" / _weights_name("model", variant), dtype)
        write_tokenizer(root / f"tokenizer{suffix}", pad)
    sched_name, sched = scheduler_config(family, prediction_type)
    _write_json(root / "scheduler" / "scheduler_config.json", sched)
    _write_json(root / "model_index.json", _model_index(family, sched_name))


def save_diffusers_folder(models, out_dir: str | os.PathLike, *, variant: str | None = None,
                          dtype: torch.dtype | None = None, prediction_type: str | None = None,
                          overwrite: bool = False) -> Path:
    """Write ``models`` as a diffusers pipeline folder, atomically (temporary sibling folder, then rename).

    Args:
        models: A :class:`library.checkpoint.io.LoadedModels`.
        out_dir: The folder to create; it must not exist yet.
        variant: diffusers weight variant (``"fp16"`` writes ``model.fp16.safetensors`` …), or ``None``.
        dtype: Cast floating-point weights to this dtype; ``None`` keeps each tensor's dtype.
        prediction_type: Scheduler ``prediction_type``; ``None`` uses :func:`default_prediction_type`.
        overwrite: Replace an existing ``out_dir`` (swapped in only after the new folder is complete).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        UserError: ``out_dir`` exists (without ``overwrite``), or the SDXL UNet does not map to diffusers keys.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_components(models, tmp, variant, dtype, prediction_type or default_prediction_type(models))
        old = tmp.with_name(tmp.name + ".old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
