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
from library.checkpoint.diffusers_folder import sdxl_config_to_diffusers
from library.errors import UserError

BETA_START, BETA_END = 0.00085, 0.012
SDXL_VAE_SCALING = 0.13025
SD_VAE_SCALING = 0.18215


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

    kwargs = sdxl_config_to_diffusers(unet.config)
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
    """``(class name, scheduler_config.json dict)``: EulerDiscrete for SDXL, PNDM for SD1/SD2 epsilon, DDIM for v."""
    common = {"num_train_timesteps": 1000, "beta_start": BETA_START, "beta_end": BETA_END,
              "beta_schedule": "scaled_linear", "prediction_type": prediction_type, "steps_offset": 1,
              "trained_betas": None, "_diffusers_version": _version("diffusers")}
    if family == "sdxl":
        return "EulerDiscreteScheduler", {**common, "_class_name": "EulerDiscreteScheduler",
                                          "interpolation_type": "linear", "timestep_spacing": "leading",
                                          "use_karras_sigmas": False}
    if prediction_type == "v_prediction":
        return "DDIMScheduler", {**common, "_class_name": "DDIMScheduler", "clip_sample": False,
                                 "set_alpha_to_one": False}
    return "PNDMScheduler", {**common, "_class_name": "PNDMScheduler", "skip_prk_steps": True,
                             "set_alpha_to_one": False}


def default_prediction_type(models) -> str:
    """``"v_prediction"`` for the 768-px SD2 UNet (``sample_size`` 96), else ``"epsilon"``."""
    unet_cfg = models.configs["unet"]
    if models.family == "sd2" and isinstance(unet_cfg, dict) and unet_cfg.get("sample_size") == 96:
        return "v_prediction"
    return "epsilon"


def _model_index(family: str, scheduler: str) -> dict:
    index = {"_diffusers_version": _version("diffusers"), "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if family == "sdxl":
        index.update(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True,
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], image_encoder=[None, None],
                     feature_extractor=[None, None])
    else:
        index.update(_class_name="StableDiffusionPipeline", safety_checker=[None, None],
                     feature_extractor=[None, None], image_encoder=[None, None], requires_safety_checker=False)
    return index


def _write_components(models, root: Path, variant: str | None, dtype, prediction_type: str) -> None:
    family = models.family
    if family == "sdxl":
        unet_cfg, unet_state = sdxl_unet_diffusers_state(models.unet)
    else:
        unet_cfg, unet_state = _diffusers_config(models.unet, "UNet2DConditionModel"), models.unet.state_dict()
    _write_json(root / "unet" / "config.json", unet_cfg)
    _save_tensors(unet_state, root / "unet" / _weights_name("diffusion_pytorch_model", variant), dtype)
    scaling = SDXL_VAE_SCALING if family == "sdxl" else SD_VAE_SCALING
    _write_json(root / "vae" / "config.json", _diffusers_config(models.vae, "AutoencoderKL", scaling_factor=scaling))
    _save_tensors(models.vae.state_dict(), root / "vae" / _weights_name("diffusion_pytorch_model", variant), dtype)
    pads = ["<|endoftext|>", "!"] if family == "sdxl" else (["!"] if family == "sd2" else ["<|endoftext|>"])
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
