"""kohya_ss GUI presets: the JSON files its LoRA tab saves, mapped to sd-train flags the way the GUI's
``lora_gui.py`` builds its sd-scripts config (bmaltais/kohya_ss, LoRA tab).

The GUI drops every value that is ``""``, ``0``, ``False`` or ``None`` before writing its TOML, derives
``network_module`` / ``network_args`` from ``LoRA_type``, ``network_train_*_only`` from the two learning
rates, and appends ``additional_parameters`` to the command line (so they win over the preset). Keys the
GUI uses outside sd-scripts (accelerate launch settings and the like) are named in one warning line.
See docs/DECISIONS.md ("kohya_ss GUI presets") for the few places where sd-train differs on purpose.
"""

from __future__ import annotations

import logging
import os
import shlex
from typing import Any

from library.errors import UserError
from library.models.families import FAMILIES, family_from_flags
from sd_train.families import family_class

logger = logging.getLogger(__name__)

MARKER = "LoRA_type"  # every preset the LoRA tab saves has it
LYCORIS = "lycoris.kohya"
_RENAMED = {"max_resolution": "resolution", "optimizer": "optimizer_type", "lora_network_weights": "network_weights"}
_SAME = (  # GUI keys written to the sd-scripts config under the same name
    "pretrained_model_name_or_path", "v2", "v_parameterization", "dataset_config", "train_data_dir", "reg_data_dir",
    "output_dir", "output_name", "logging_dir", "save_model_as", "save_precision", "training_comment",
    "learning_rate", "lr_scheduler", "lr_scheduler_type", "lr_scheduler_num_cycles", "lr_scheduler_power",
    "train_batch_size", "max_train_epochs", "max_train_steps", "save_every_n_epochs", "save_every_n_steps",
    "save_last_n_steps", "save_last_n_steps_state", "save_last_n_epochs", "save_last_n_epochs_state", "seed",
    "cache_latents", "cache_latents_to_disk", "skip_cache_check", "caption_extension", "enable_bucket",
    "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "max_grad_norm",
    "mixed_precision", "gradient_checkpointing", "fp8_base", "full_fp16", "full_bf16", "highvram", "mem_eff_attn",
    "shuffle_caption", "keep_tokens", "caption_dropout_rate", "caption_dropout_every_n_epochs", "color_aug",
    "flip_aug", "random_crop", "masked_loss", "clip_skip", "gradient_accumulation_steps", "max_token_length",
    "max_data_loader_n_workers", "persistent_data_loader_workers", "prior_loss_weight", "save_state",
    "save_state_on_train_end", "resume", "v_pred_like_loss", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "loss_type", "huber_schedule", "huber_c", "huber_scale", "vae_batch_size", "min_snr_gamma", "min_timestep",
    "max_timestep", "vae", "weighted_captions", "debiased_estimation_loss", "scale_v_pred_loss_like_noise_pred",
    "scale_weight_norms", "network_dim", "network_alpha", "network_dropout", "network_weights", "dim_from_weights",
    "sample_every_n_steps", "sample_every_n_epochs", "sample_sampler", "dynamo_backend", "log_with",
    "log_tracker_name", "log_tracker_config", "log_config", "wandb_api_key", "metadata_author",
    "metadata_description", "metadata_license", "metadata_tags", "metadata_title", "huggingface_repo_id",
    "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility", "huggingface_path_in_repo",
    "save_state_to_huggingface", "resume_from_huggingface", "async_upload")
_LYCORIS_DEFAULTS = {  # the GUI's widget defaults; LyCORIS args are written even when they equal these
    "LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "use_tucker": False, "rank_dropout": 0,
    "bypass_mode": False, "dora_wd": False, "module_dropout": 0, "use_scalar": False, "rank_dropout_scale": False,
    "train_norm": False, "factor": -1, "use_cp": False, "decompose_both": False, "train_on_input": True, "unit": 1,
    "constrain": 0.0, "rescaled": False}
_ARG_KEY = {"preset": "LyCORIS_preset", "block_size": "unit", "constraint": "constrain"}  # network arg -> GUI key
_LOCON = "preset conv_dim conv_alpha use_tucker rank_dropout bypass_mode dora_wd module_dropout use_scalar " \
         "rank_dropout_scale algo train_norm"
_LYCORIS_ARGS = {  # LoRA_type -> (algo, args in the GUI's order)
    "LyCORIS/LoCon": ("locon", _LOCON), "LyCORIS/LoHa": ("loha", _LOCON),
    "LyCORIS/LoKr": ("lokr", "preset conv_dim conv_alpha use_tucker rank_dropout bypass_mode dora_wd module_dropout "
                             "factor use_cp use_scalar decompose_both rank_dropout_scale algo train_norm"),
    "LyCORIS/iA3": ("ia3", "preset conv_dim conv_alpha train_on_input algo"),
    "LyCORIS/DyLoRA": ("dylora", "preset conv_dim conv_alpha use_tucker block_size rank_dropout module_dropout "
                                 "algo train_norm"),
    "LyCORIS/GLoRA": ("glora", "preset conv_dim conv_alpha use_tucker rank_dropout module_dropout "
                               "rank_dropout_scale algo train_norm"),
    "LyCORIS/BOFT": ("boft", "preset conv_dim conv_alpha module_dropout use_tucker rank_dropout rank_dropout_scale "
                             "algo train_norm"),
    "LyCORIS/Diag-OFT": ("diag-oft", "preset conv_dim conv_alpha module_dropout use_tucker rank_dropout "
                                     "rank_dropout_scale constraint rescaled algo train_norm"),
    "LyCORIS/Native Fine-Tuning": ("full", "preset rank_dropout module_dropout rank_dropout_scale algo train_norm"),
}
_KOHYA_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
               "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
_NOT_SHIPPED = {"Kohya DyLoRA": "networks.dylora", "LoRA-FA": "networks.lora_fa", "Kohya LoHa": "networks.loha",
                "Kohya LoKr": "networks.lokr"}
_OTHER_FAMILIES = {"Flux1": "FLUX.1", "Flux1 OFT": "FLUX.1", "HunyuanImage-2.1": "HunyuanImage",
                   "Anima": "Anima", "Lumina": "Lumina", "flux1_checkbox": "FLUX.1", "sd3_checkbox": "SD3",
                   "hunyuan_image_checkbox": "HunyuanImage", "anima_checkbox": "Anima", "lumina_checkbox": "Lumina"}
_FAMILY_PREFIXES = ("flux1_", "sd3_", "hunyuan_", "anima_", "lumina_", "t5xxl", "clip_g", "clip_l", "img_", "txt_",
                    "single_", "double_", "train_single", "train_double", "ggpo_", "show_timesteps")
_FAMILY_KEYS = {  # settings of the DiT families the GUI writes only when that family's checkbox is on
    "ae", "model_type", "discrete_flow_shift", "model_prediction_type", "timestep_sampling", "split_mode",
    "train_blocks", "enable_all_linear", "guidance_scale", "mem_eff_save", "apply_t5_attn_mask", "split_qkv",
    "train_t5xxl", "cpu_offload_checkpointing", "blocks_to_swap", "in_dims", "logit_mean", "logit_std", "mode_scale",
    "pos_emb_random_crop_rate", "save_clip", "weighting_scheme", "train_lora_ggpo", "fp8_base_unet"}
_ACCELERATE = {"num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
               "main_process_port", "extra_accelerate_launch_args", "dynamo_mode", "dynamo_use_fullgraph",
               "dynamo_use_dynamic"}
_GUI_ONLY = {"model_list", "training_preset", "save_as_bool", "lowvram", "no_token_padding", "train_inpainting",
             "conv_dims", "conv_alphas"}
_CONSUMED = {  # read by the mapping below, never passed on under their own name
    MARKER, "xformers", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs", "noise_offset_type",
    "noise_offset", "adaptive_noise_scale", "noise_offset_random_strength", "multires_noise_iterations",
    "multires_noise_discount", "text_encoder_lr", "unet_lr", "lr_warmup", "lr_warmup_steps", "optimizer_args",
    "lr_scheduler_args", "epoch", "stop_text_encoder_training", "additional_parameters", "wandb_run_name",
    "sample_prompts", "stop_text_encoder_training_pct", "use_wandb", "use_8bit_adam", "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio", *_LYCORIS_DEFAULTS, *_KOHYA_ARGS, *(s.tool_flag for s in FAMILIES.values())}


def is_gui_preset(doc: dict) -> bool:
    """A kohya_ss GUI LoRA preset: a JSON object with ``LoRA_type``."""
    return MARKER in doc


def preset_family(doc: dict):
    """The :class:`FamilySpec` the preset's model checkboxes (``v2``, ``sdxl``) select; ``None`` without any."""
    flags = {s.tool_flag for s in FAMILIES.values()}
    if not flags & set(doc):
        return None
    return family_from_flags(**{k: doc[k] in (True, "True", "true") for k in flags & set(doc)})


def _is_set(value: Any) -> bool:
    """The GUI's filter: ``""``, ``0``, ``0.0``, ``False`` and ``None`` are dropped (``0 == False``)."""
    return value not in ("", False, None)


def _number(doc: dict, key: str, path: str, default: float = 0.0) -> float:
    value = doc.get(key, default)
    try:
        return float(value) if value not in ("", None) else default
    except (TypeError, ValueError):
        raise UserError(f"{path}: GUI key '{key}': {value!r} is not a number") from None


def _coerce(field, value: Any, key: str, path: str) -> Any:
    """The GUI value (strings for numbers, floats for integers) in the type of sd-train's flag."""
    meta = field.metadata
    if meta["flag"]:
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1")
    if value == "" or meta["type"] in (None, str) or not isinstance(value, (int, float, str)):
        return value
    try:
        number = float(value)
    except ValueError:
        return value  # the flag's own converter names it
    if getattr(meta["type"], "__name__", "") == "int":
        if not number.is_integer():
            raise UserError(f"{path}: GUI key '{key}': {value!r} is not a whole number")
        return int(number)
    return number if meta["type"] is float else value


def _split_args(text: Any) -> list[str]:
    """``'"a=1" b=2'`` -> ``["a=1", "b=2"]`` (the GUI strips the quotes and splits on spaces)."""
    return str(text or "").replace('"', "").split()


def _network(doc: dict, path: str) -> tuple[str, list[str]]:
    """``(network_module, network_args)`` for ``LoRA_type`` (``LoCon`` is the GUI's old name of LyCORIS/LoCon)."""
    kind = {"LoCon": "LyCORIS/LoCon"}.get(doc[MARKER], doc[MARKER])
    if kind in _OTHER_FAMILIES:
        raise UserError(f"{path}: LoRA_type '{kind}' trains {_OTHER_FAMILIES[kind]}; sd-train trains SD 1.x/2.x "
                        "and SDXL only")
    if kind in _NOT_SHIPPED:
        raise UserError(f"{path}: LoRA_type '{kind}' needs kohya's {_NOT_SHIPPED[kind]}, which sd-train does not "
                        "ship; use Standard, Kohya LoCon or a LyCORIS type")
    value = {**_LYCORIS_DEFAULTS, **{k: v for k, v in doc.items() if k in _LYCORIS_DEFAULTS and v is not None}}
    if kind in _LYCORIS_ARGS:
        algo, names = _LYCORIS_ARGS[kind]
        args = [f"{n}={algo if n == 'algo' else value[_ARG_KEY.get(n, n)]}" for n in names.split()]
        return LYCORIS, _split_args(" ".join(args))
    if kind not in ("Standard", "Kohya LoCon"):
        known = ", ".join(["Standard", "Kohya LoCon", *_LYCORIS_ARGS])
        raise UserError(f"{path}: unknown LoRA_type '{kind}' (sd-train maps {known})")
    args = [f"conv_dim={value['conv_dim']}", f"conv_alpha={value['conv_alpha']}"] if kind == "Kohya LoCon" else []
    args += [f"{k}={doc[k]}" for k in _KOHYA_ARGS if _is_set(doc.get(k))]
    return "networks.lora", _split_args(" ".join(args))


def _derived(doc: dict, entry: str, path: str) -> dict[str, Any]:
    """Flags the GUI computes from several keys (network, learning rates, warm-up, noise, run length, ...)."""
    module, args = _network(doc, path)
    args += [f"{k}={doc[k]}" for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                                       "loraplus_text_encoder_lr_ratio") if _is_set(doc.get(k))]
    te_lr, unet_lr = _number(doc, "text_encoder_lr", path), _number(doc, "unet_lr", path)
    if not _number(doc, "learning_rate", path) and not te_lr and not unet_lr:
        raise UserError(f"{path}: learning_rate, text_encoder_lr and unet_lr are all 0 (the GUI refuses this too)")
    out = {"network_module": module, "network_args": args or None, "text_encoder_lr": [te_lr, te_lr] if te_lr else None,
           "unet_lr": unet_lr or None, "network_train_unet_only": not te_lr and bool(unet_lr),
           "network_train_text_encoder_only": bool(te_lr) and not unet_lr,
           "optimizer_args": _split_args(doc.get("optimizer_args")) or None,
           "lr_scheduler_args": _split_args(doc.get("lr_scheduler_args")) or None}
    steps, pct = _number(doc, "lr_warmup_steps", path), _number(doc, "lr_warmup", path)
    out["lr_warmup_steps"] = int(steps) if steps > 0 else f"{pct:g}%" if pct else None  # "N%": a fraction
    kind = doc.get("noise_offset_type", "Original")
    names = ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength") if kind == "Original" else \
        ("multires_noise_iterations", "multires_noise_discount") if kind == "Multires" else ()
    out.update({k: doc.get(k) for k in names})
    if doc.get("xformers") in (True, "xformers", "sdpa"):
        out["sdpa" if doc["xformers"] == "sdpa" else "xformers"] = True
    if family_class(entry).takes_sdxl_only_flags:  # the GUI writes these only for SDXL
        out.update(no_half_vae=doc.get("sdxl_no_half_vae"), cache_text_encoder_outputs=doc.get(
            "sdxl_cache_text_encoder_outputs"))
    if doc.get("use_wandb") in (True, "True") and not doc.get("log_with"):
        out["log_with"] = "wandb"
    if "optimizer" not in doc and doc.get("use_8bit_adam"):
        out["optimizer_type"] = "AdamW8bit"
    out["wandb_run_name"] = doc.get("wandb_run_name") or doc.get("output_name")
    stop = _number(doc, "stop_text_encoder_training", path) or _number(doc, "stop_text_encoder_training_pct", path)
    out["train_text_encoder_frac"] = stop / 100 if stop > 0 else None  # the GUI's value is a percentage
    return out


def _run_length(doc: dict, out: dict, path: str) -> bool:
    """GUI ``epoch``: the run length when neither max_train_steps nor max_train_epochs is set (the GUI turns it
    into steps from the image folders; without a dataset config sd-train trains that many epochs)."""
    if _number(doc, "max_train_steps", path) or _number(doc, "max_train_epochs", path) or doc.get("dataset_config"):
        return False
    epochs = int(_number(doc, "epoch", path))
    out["max_train_epochs"] = epochs if epochs > 0 else None
    return True


def _extra_flags(doc: dict, path: str, parse_args) -> dict[str, Any]:
    """``additional_parameters``: extra command-line flags the GUI appends after ``--config_file``."""
    text = str(doc.get("additional_parameters") or "")
    try:
        return vars(parse_args(shlex.split(text)))
    except (UserError, ValueError) as exc:
        raise UserError(f"{path}: additional_parameters {text!r}: {exc}") from None


def _not_used(doc: dict, epoch_used: bool, sample_file: bool) -> list[str]:
    """Set GUI keys that map to no sd-train flag, with why (one warning line)."""
    notes = []
    for key, value in doc.items():
        if key in _CONSUMED or key in _SAME or key in _RENAMED or key in _OTHER_FAMILIES:
            if key == "epoch" and not epoch_used and _is_set(value):
                notes.append("epoch (max_train_steps/max_train_epochs or the dataset config decide)")
            elif key.startswith("stop_text_encoder") and _number(doc, key, "") < 0:
                notes.append(f"{key} {value} (no text-encoder training: set text_encoder_lr to 0 instead)")
            elif key == "sample_prompts" and _is_set(value) and not sample_file:
                notes.append("sample_prompts (prompt text: save it to a file and pass --sample_prompts FILE)")
            continue
        if key in _FAMILY_KEYS or key.startswith(_FAMILY_PREFIXES) or not _is_set(value):
            continue
        why = ("accelerate launch setting" if key in _ACCELERATE else "GUI setting" if key in _GUI_ONLY
               else "unknown GUI key")
        notes.append(f"{key} ({why})")
    return notes


def preset_flags(doc: dict, entry: str, path: str, parse_args) -> dict[str, Any]:
    """Map a kohya_ss GUI LoRA preset to ``{flag: value}`` as the GUI's LoRA tab would run it.

    Args:
        doc: The preset (``--config_skip`` keys already removed).
        entry: ``"sd"`` or ``"sdxl"``; must match the preset's ``sdxl`` checkbox when it has one.
        path: The file (for messages).
        parse_args: The entry point's argument parser (defaults suppressed) for ``additional_parameters``.

    Raises:
        UserError: another model family, a network sd-train does not ship, the wrong training script,
            or a value that is not a number where one is needed.
    """
    from sd_train.options import option_fields

    for key, family in _OTHER_FAMILIES.items():
        if key.endswith("_checkbox") and doc.get(key) in (True, "True"):
            raise UserError(f"{path}: a kohya_ss {family} preset ({key}); sd-train trains SD 1.x/2.x and SDXL only")
    spec = preset_family(doc)
    if spec is not None and spec.trainer_script != family_class(entry).script():
        raise UserError(f"{path}: this kohya_ss preset is for {spec.label} models; use {spec.trainer_script}")
    fields = {f.name: f for _, f in option_fields(entry)}
    out = {_RENAMED.get(k, k): v for k, v in doc.items() if k in _SAME or k in _RENAMED}
    out.update(_derived(doc, entry, path))
    epoch_used = _run_length(doc, out, path)
    sample = doc.get("sample_prompts")
    if _is_set(sample) and os.path.isfile(str(sample)):
        out["sample_prompts"] = sample
    flags = {}
    for flag, value in out.items():
        value = _coerce(fields[flag], value, flag, path) if flag in fields and not isinstance(value, list) else value
        if _is_set(value) or (flag == "max_data_loader_n_workers" and value == 0):  # the GUI always writes it
            flags[flag] = value
    flags.update(_extra_flags(doc, path, parse_args))
    notes = _not_used(doc, epoch_used, "sample_prompts" in out)
    if notes:
        logger.warning("%s: kohya_ss GUI settings sd-train does not apply: %s", path, "; ".join(notes))
    return flags
