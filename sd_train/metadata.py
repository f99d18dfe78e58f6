"""The ``ss_*`` and ``modelspec.*`` metadata of saved LoRA files (FORMAT.md §4-5).

Pure builders: every input is an explicit argument (option groups, a dataset summary, model
information and run values), every output value is a string. kohya's formatting rules apply:
``str(value)`` for scalars (``None`` -> ``"None"``) and ``json.dumps`` (``", "`` / ``": "``
separators, ASCII-escaped) for structured values.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import mimetypes
import os
import time
from typing import Any

import sd_train
from library.models.families import family_spec
from sd_train.options import (DatasetOptions, ModelOptions, NetworkOptions, OptimizerOptions, SavingOptions,
                              TrainingOptions)
from sd_train.options.base import parse_resolution

logger = logging.getLogger(__name__)

MINIMAL_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_network_args")


def _json(value: Any) -> str:
    return json.dumps(value)


def base_model_version(family: str, v_parameterization: bool) -> str:
    """``ss_base_model_version``: ``sd_v1``, ``sd_v2``, ``sd_v1_v``, ``sd_v2_v`` or ``sdxl_base_v1-0``."""
    return family_spec(family).base_model_version(v_parameterization)


def _first_te_lr(optimizer: OptimizerOptions) -> float | None:
    lrs = optimizer.text_encoder_lr
    return lrs[0] if lrs else None


def _run_keys(training: TrainingOptions, optimizer: OptimizerOptions, run: dict) -> dict[str, Any]:
    return {
        "ss_session_id": run["session_id"],
        "ss_training_started_at": run["training_started_at"],
        "ss_learning_rate": optimizer.learning_rate,
        "ss_unet_lr": optimizer.unet_lr,
        "ss_text_encoder_lr": _first_te_lr(optimizer),
        "ss_num_epochs": run["num_train_epochs"],
        "ss_gradient_accumulation_steps": training.gradient_accumulation_steps,
        "ss_max_train_steps": run["max_train_steps"],
        "ss_lr_warmup_steps": optimizer.lr_warmup_steps,
        "ss_lr_scheduler": optimizer.lr_scheduler,
        "ss_seed": run["seed"],
        "ss_optimizer": run["optimizer"],
        "ss_max_grad_norm": optimizer.max_grad_norm,
        "ss_sd_scripts_commit_hash": "(unknown)",  # kohya-compat: sd-train's version is in sd_train.version
    }


def _option_keys(model: ModelOptions, dataset: DatasetOptions, training: TrainingOptions,
                 network: NetworkOptions, saving: SavingOptions) -> dict[str, Any]:
    t = training
    return {
        "ss_output_name": saving.output_name,
        "ss_gradient_checkpointing": model.gradient_checkpointing,
        "ss_network_dropout": network.network_dropout,
        "ss_mixed_precision": model.mixed_precision,
        "ss_full_fp16": model.full_fp16,
        "ss_clip_skip": model.clip_skip,
        "ss_max_token_length": model.max_token_length,
        "ss_cache_latents": dataset.cache_latents,
        "ss_lowram": model.lowram,
        "ss_noise_offset": t.noise_offset,
        "ss_multires_noise_iterations": t.multires_noise_iterations,
        "ss_multires_noise_discount": t.multires_noise_discount,
        "ss_adaptive_noise_scale": t.adaptive_noise_scale,
        "ss_zero_terminal_snr": t.zero_terminal_snr,
        "ss_noise_offset_random_strength": t.noise_offset_random_strength,
        "ss_ip_noise_gamma": t.ip_noise_gamma,
        "ss_ip_noise_gamma_random_strength": t.ip_noise_gamma_random_strength,
        "ss_training_comment": saving.training_comment,
        "ss_caption_dropout_rate": dataset.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": dataset.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": dataset.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": dataset.face_crop_aug_range,
        "ss_prior_loss_weight": t.prior_loss_weight,
        "ss_min_snr_gamma": t.min_snr_gamma,
        "ss_scale_weight_norms": network.scale_weight_norms,
        "ss_debiased_estimation": bool(t.debiased_estimation_loss),
        "ss_loss_type": t.loss_type,
        "ss_huber_schedule": t.huber_schedule,
        "ss_huber_scale": t.huber_scale,
        "ss_huber_c": t.huber_c,
        "ss_fp8_base": bool(model.fp8_base),
        "ss_fp8_base_unet": bool(model.fp8_base_unet),
        "ss_validation_seed": t.validation_seed,
        "ss_validation_split": t.validation_split,
        "ss_max_validation_steps": t.max_validation_steps,
        "ss_validate_every_n_epochs": t.validate_every_n_epochs,
        "ss_validate_every_n_steps": t.validate_every_n_steps,
        "ss_resize_interpolation": dataset.resize_interpolation,
    }


def _folder_keys(dataset: DatasetOptions, training: TrainingOptions, summary: dict, num_processes: int) -> dict:
    """Keys written without ``--dataset_config`` (one folder-convention dataset)."""
    return {
        "ss_batch_size_per_device": training.train_batch_size,
        "ss_total_batch_size": training.train_batch_size * num_processes * training.gradient_accumulation_steps,
        "ss_resolution": parse_resolution(dataset.resolution),
        "ss_color_aug": dataset.color_aug,
        "ss_flip_aug": dataset.flip_aug,
        "ss_random_crop": dataset.random_crop,
        "ss_shuffle_caption": dataset.shuffle_caption,
        "ss_enable_bucket": dataset.enable_bucket,
        "ss_bucket_no_upscale": dataset.bucket_no_upscale,
        "ss_min_bucket_reso": dataset.min_bucket_reso,
        "ss_max_bucket_reso": dataset.max_bucket_reso,
        "ss_keep_tokens": dataset.keep_tokens,
        "ss_dataset_dirs": _json(summary["dataset_dirs"]),
        "ss_reg_dataset_dirs": _json(summary["reg_dataset_dirs"]),
        "ss_tag_frequency": _json(summary["tag_frequency"]),
        "ss_bucket_info": _json(summary["bucket_info"]),
    }


def _model_keys(model_info: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"ss_sd_model_name": model_info["sd_model_name"]}
    for key in ("sd_model_hash", "new_sd_model_hash", "vae_name", "vae_hash", "new_vae_hash"):
        if model_info.get(key) is not None:
            out[f"ss_{key}"] = model_info[key]
    return out


def build_ss_metadata(model: ModelOptions, dataset: DatasetOptions, training: TrainingOptions,
                      optimizer: OptimizerOptions, network: NetworkOptions, saving: SavingOptions, *,
                      summary: dict, model_info: dict, run: dict) -> dict[str, str]:
    """Build the ``ss_*`` dict of a run (``ss_steps``/``ss_epoch`` come from :func:`update_for_save`).

    Args:
        model, dataset, training, optimizer, network, saving: The option groups.
        summary: Dataset summary: ``num_train_images``, ``num_validation_images``, ``num_reg_images``,
            ``num_batches_per_epoch``; with ``--dataset_config`` also ``datasets`` (list of dicts),
            ``tag_frequency``, ``dataset_dirs``; without it ``dataset_dirs``, ``reg_dataset_dirs``,
            ``tag_frequency``, ``bucket_info``.
        model_info: ``family`` (``sd1``/``sd2``/``sdxl``), ``v_parameterization``, ``sd_model_name``
            and, for local files, ``sd_model_hash``/``new_sd_model_hash`` (+ ``vae_*`` with ``--vae``).
        run: ``session_id``, ``training_started_at`` (s), ``seed`` (used), ``max_train_steps``,
            ``num_train_epochs``, ``num_processes``, ``optimizer`` (ss_optimizer string) and
            ``network_args`` (parsed dict incl. the host's ``dropout``; ``None`` without --network_args).

    Returns:
        ``{key: str}``; with ``--no_metadata`` only the keys of ``MINIMAL_KEYS``.
    """
    values: dict[str, Any] = {
        "ss_v2": bool(model.v2),
        "ss_base_model_version": base_model_version(model_info["family"], model_info["v_parameterization"]),
        "ss_network_module": network.network_module,
        "ss_network_dim": network.network_dim,
        "ss_network_alpha": network.network_alpha,
    }
    if run.get("network_args") is not None:
        values["ss_network_args"] = _json(run["network_args"])
    if not saving.no_metadata:
        values.update(_run_keys(training, optimizer, run))
        values.update(_option_keys(model, dataset, training, network, saving))
        for key in ("num_train_images", "num_validation_images", "num_reg_images", "num_batches_per_epoch"):
            values[f"ss_{key}"] = summary[key]
        if dataset.dataset_config:
            values["ss_datasets"] = _json(summary["datasets"])
            values["ss_tag_frequency"] = _json(summary["tag_frequency"])
            values["ss_dataset_dirs"] = _json(summary["dataset_dirs"])
        else:
            values.update(_folder_keys(dataset, training, summary, run["num_processes"]))
        values.update(_model_keys(model_info))
    return {key: str(value) for key, value in values.items()}


def _thumbnail(value: str) -> str | None:
    if value.startswith("data:") or not value:  # kohya-compat: "" is written as given
        return value
    if not os.path.isfile(value):
        logger.warning("--metadata_thumbnail %s: file not found; modelspec.thumbnail is not written", value)
        return None
    mime = mimetypes.guess_type(value)[0] or "image/png"
    with open(value, "rb") as fh:
        return f"data:{mime};base64,{base64.b64encode(fh.read()).decode('ascii')}"


def build_modelspec(model: ModelOptions, dataset: DatasetOptions, training: TrainingOptions,
                    saving: SavingOptions, *, family: str, training_started_at: float) -> dict[str, str]:
    """Build the ``modelspec.*`` dict (ModelSpec 1.0.1, FORMAT.md §5); ``date`` is set at save time."""
    v_param, fam = bool(model.v_parameterization), family_spec(family)
    reso = parse_resolution(dataset.resolution)
    title = saving.metadata_title  # kohya-compat: an empty title is written as given
    title = (saving.output_name or f"LoRA@{training_started_at}") if title is None else title
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": fam.modelspec_architecture(v_param) + "/lora",
        "modelspec.implementation": fam.implementation,
        "modelspec.title": title,
        "modelspec.resolution": f"{reso[0]}x{reso[1]}" if reso else fam.default_resolution(v_param),
        "modelspec.prediction_type": "v" if v_param else "epsilon",
        "modelspec.implementation_version": f"sd-train/{sd_train.__version__}",
        "modelspec.date": _iso_now(),
    }
    if training.min_timestep is not None or training.max_timestep is not None:
        low = training.min_timestep if training.min_timestep is not None else 0
        high = training.max_timestep if training.max_timestep is not None else 1000
        spec["modelspec.timestep_range"] = f"{low},{high}"
    if model.clip_skip is not None:
        spec["modelspec.encoder_layer"] = str(model.clip_skip)
    for name in ("author", "description", "license", "tags", "usage_hint", "merged_from", "trigger_phrase",
                 "preprocessor", "is_negative_embedding", "thumbnail"):
        value = getattr(saving, f"metadata_{name}")
        if value is not None and name == "thumbnail":
            value = _thumbnail(value)
        if value is not None:
            spec[f"modelspec.{name}"] = value
    return spec


def _iso_now(now: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(int(time.time() if now is None else now)).isoformat()


def build_metadata(model: ModelOptions, dataset: DatasetOptions, training: TrainingOptions,
                   optimizer: OptimizerOptions, network: NetworkOptions, saving: SavingOptions, *,
                   summary: dict, model_info: dict, run: dict) -> dict[str, str]:
    """All metadata of a run: :func:`build_ss_metadata` + :func:`build_modelspec` + ``sd_train.version``.

    Arguments as in :func:`build_ss_metadata`; the family comes from ``model_info["family"]`` and
    the start time from ``run["training_started_at"]``. Pass the result through
    :func:`update_for_save` before each save.
    """
    meta = build_ss_metadata(model, dataset, training, optimizer, network, saving,
                             summary=summary, model_info=model_info, run=run)
    meta.update(build_modelspec(model, dataset, training, saving, family=model_info["family"],
                                training_started_at=run["training_started_at"]))
    meta["sd_train.version"] = sd_train.__version__  # sd-train: not an ss_* key, so not in sshs_legacy_hash
    return meta


def update_for_save(meta: dict[str, str], steps: int, epoch: int, now: float | None = None) -> dict[str, str]:
    """Return a copy with the per-save keys: ``ss_training_finished_at``, ``ss_steps``, ``ss_epoch``
    (full metadata only) and ``modelspec.date`` (local time, ISO 8601 to the second).

    Args:
        meta: The dict of :func:`build_metadata`.
        steps: Global step of the save.
        epoch: Epoch in progress, counted from 1 (the final save passes ``num_train_epochs``).
        now: Save time in seconds since the epoch (default ``time.time()``).
    """
    now = time.time() if now is None else now
    out = dict(meta)
    if "ss_session_id" in meta:
        out.update(ss_training_finished_at=str(now), ss_steps=str(steps), ss_epoch=str(epoch))
    if "modelspec.sai_model_spec" in meta:
        out["modelspec.date"] = _iso_now(now)
    return out
