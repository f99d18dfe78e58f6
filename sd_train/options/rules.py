"""Cross-flag rules of CLI.md §5.12, checked before any model is loaded.

``normalize`` applies kohya's aliases and implications to the flat values (it returns the warnings
it produces); ``validate`` checks the rules on the finished options, raising :class:`UserError`
that names both flags for errors and returning the warning lines.
"""

from __future__ import annotations

from typing import Any, Callable

from library.errors import UserError
from sd_train.options import TrainOptions
from sd_train.options import pivotal
from sd_train.options.workflow import workflow_rules


def normalize(values: dict[str, Any], entry: str) -> list[str]:
    """Apply legacy aliases and implied flags to flat option values, in place.

    Args:
        values: ``{flag_name: value}`` after config-file and command-line merging.
        entry: ``"sd"`` or ``"sdxl"``.

    Returns:
        Warning lines.

    Raises:
        UserError: ``--use_8bit_adam`` / ``--use_lion_optimizer`` together with each other or with
            ``--optimizer_type``.
    """
    notes: list[str] = []
    if values.get("caption_extention") is not None:  # kohya-compat: the old misspelling wins when given
        values["caption_extension"] = values["caption_extention"]
    for alias, name in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):  # kohya-compat
        if not values.get(alias):
            continue
        if values.get("optimizer_type"):
            raise UserError(f"--{alias} and --optimizer_type {values['optimizer_type']} are both set; keep one")
        values["optimizer_type"] = name
    if values.get("cache_latents_to_disk"):
        values["cache_latents"] = True
    if values.get("cache_text_encoder_outputs_to_disk"):
        values["cache_text_encoder_outputs"] = True
    for name in ("sample_every_n_steps", "sample_every_n_epochs"):
        if values.get(name) is not None and values[name] <= 0:
            notes.append(f"--{name} {values[name]} <= 0: sampling at that interval is disabled")
            values[name] = None
    pivotal.normalize(values, entry)
    return notes


def _both(a: str, b: str) -> Callable[[dict, str], bool]:
    return lambda v, e: bool(v[a]) and bool(v[b])


def _fp8(v: dict) -> bool:
    return bool(v["fp8_base"] or v["fp8_base_unet"])


def _lycoris_without_bypass(v: dict, entry: str) -> bool:
    """fp8 with a LyCORIS plugin outside bypass mode (LyCORIS reads ``bypass_mode`` as false only if absent
    or "false"; in merge mode it adds its delta to the stored fp8 weight, which torch cannot do)."""
    if not _fp8(v) or not str(v["network_module"] or "").startswith("lycoris"):
        return False
    args = {k.strip(): val.strip() for k, _, val in (str(a).partition("=") for a in v["network_args"] or [])}
    return args.get("bypass_mode", "false").lower() == "false"


def _negative_lr(v: dict, entry: str) -> bool:
    rates = [v["learning_rate"], v["unet_lr"], *(v["text_encoder_lr"] or [])]
    return any(r is not None and r < 0 for r in rates)


def _bad_timesteps(v: dict, entry: str) -> bool:
    lo = 0 if v["min_timestep"] is None else v["min_timestep"]
    hi = 1000 if v["max_timestep"] is None else v["max_timestep"]
    return not (0 <= lo <= hi <= 1000 and lo < 1000)


def _rules() -> list[tuple[str, Callable[[dict, str], bool], str]]:
    """``(level, condition(values, entry), message)`` for every rule, in CLI.md §5.12 order."""
    return [
        ("error", _both("cache_latents", "color_aug"),
         "--cache_latents cannot be used with --color_aug (augmented images cannot be cached); drop one"),
        ("error", _both("cache_latents", "random_crop"),
         "--cache_latents cannot be used with --random_crop (random crops cannot be cached); drop one"),
        ("error", lambda v, e: v["adaptive_noise_scale"] is not None and v["noise_offset"] is None,
         "--adaptive_noise_scale requires --noise_offset"),
        ("error", lambda v, e: v["scale_v_pred_loss_like_noise_pred"] and not v["v_parameterization"],
         "--scale_v_pred_loss_like_noise_pred requires --v_parameterization"),
        ("error", lambda v, e: bool(v["v_pred_like_loss"]) and v["v_parameterization"],
         "--v_pred_like_loss cannot be used with --v_parameterization"),
        ("warning", lambda v, e: v["zero_terminal_snr"] and not v["v_parameterization"],
         "--zero_terminal_snr is meant for --v_parameterization models; training epsilon-prediction with it"),
        ("error", lambda v, e: v.get("cache_text_encoder_outputs") and not v["network_train_unet_only"],
         "--cache_text_encoder_outputs requires --network_train_unet_only"),
        ("error", lambda v, e: v.get("cache_text_encoder_outputs") and v["shuffle_caption"],
         "--cache_text_encoder_outputs cannot be used with --shuffle_caption"),
        ("error", lambda v, e: v.get("cache_text_encoder_outputs") and v["caption_dropout_rate"] > 0,
         "--cache_text_encoder_outputs cannot be used with --caption_dropout_rate"),
        ("error", lambda v, e: v.get("cache_text_encoder_outputs") and v["caption_tag_dropout_rate"] > 0,
         "--cache_text_encoder_outputs cannot be used with --caption_tag_dropout_rate"),
        ("error", lambda v, e: v.get("cache_text_encoder_outputs") and v["token_warmup_step"] > 0,
         "--cache_text_encoder_outputs cannot be used with --token_warmup_step (token warm-up)"),
        ("warning", lambda v, e: v.get("cache_text_encoder_outputs") and v["enable_wildcard"],  # sd-train:
         "--cache_text_encoder_outputs: --enable_wildcard is not applied (each raw caption is encoded once)"),
        ("warning", lambda v, e: v.get("cache_text_encoder_outputs") and v["caption_dropout_every_n_epochs"] > 0,
         "--cache_text_encoder_outputs: --caption_dropout_every_n_epochs is not applied (captions encoded once)"),
        ("error", lambda v, e: v["full_fp16"] and v["mixed_precision"] != "fp16",
         "--full_fp16 requires --mixed_precision fp16"),
        ("warning", lambda v, e: v["full_fp16"] and str(v["optimizer_type"] or "AdamW").lower() == "adamw",
         "--full_fp16 with AdamW: fp16 rounds its eps (1e-8) to 0, so early steps can be NaN and get skipped; "
         "prefer --optimizer_type AdamW8bit or Lion, or bf16 with --full_bf16"),
        ("error", lambda v, e: v["full_bf16"] and v["mixed_precision"] != "bf16",
         "--full_bf16 requires --mixed_precision bf16"),
        ("error", lambda v, e: _fp8(v) and v["mixed_precision"] not in ("fp16", "bf16"),  # kohya-compat
         "--fp8_base / --fp8_base_unet require --mixed_precision fp16 or bf16 (fp8 weights compute upcast)"),
        ("warning", _both("fp8_base", "fp8_base_unet"),
         "--fp8_base_unet is set: only the UNet is stored in fp8, the text encoders stay in fp16/bf16"),
        ("error", _lycoris_without_bypass,  # sd-train: LyCORIS would add its delta to the fp8 weight and crash
         "--fp8_base / --fp8_base_unet with a LyCORIS --network_module need --network_args bypass_mode=True"),
        ("error", lambda v, e: v["torch_compile"] and v["dynamo_backend"] == "no",
         "--torch_compile with --dynamo_backend no compiles nothing; pick a backend (default inductor) or drop "
         "--torch_compile"),
        ("error", lambda v, e: v["max_nan_steps"] < 1, "--max_nan_steps must be at least 1"),
        ("error", lambda v, e: v["network_dim"] is not None and v["network_dim"] < 1,
         "--network_dim must be at least 1"),
        ("error", lambda v, e: v["train_batch_size"] < 1, "--train_batch_size must be at least 1"),
        ("error", lambda v, e: v["gradient_accumulation_steps"] < 1,
         "--gradient_accumulation_steps must be at least 1"),
        ("error", _negative_lr, "--learning_rate, --unet_lr and --text_encoder_lr must not be negative"),
        ("error", lambda v, e: v["max_grad_norm"] < 0, "--max_grad_norm must not be negative (0 turns clipping off)"),
        ("error", lambda v, e: v["network_dropout"] is not None and not 0 <= v["network_dropout"] <= 1,
         "--network_dropout must be between 0 and 1"),
        ("error", _bad_timesteps, "--min_timestep / --max_timestep must satisfy 0 <= min <= max <= 1000 "
                                  "(min below 1000; t is drawn from [min, max))"),
        ("error", _both("network_train_unet_only", "network_train_text_encoder_only"),  # sd-train:
         "--network_train_unet_only and --network_train_text_encoder_only cannot both be set"),
        ("error", lambda v, e: v["lr_scheduler"] == "constant" and v["lr_warmup_steps"] not in (0, 0.0),
         "--lr_scheduler constant cannot use --lr_warmup_steps; use --lr_scheduler constant_with_warmup"),
        ("error", lambda v, e: (v["initial_step"] is not None and v["max_train_epochs"] is None
                                and v["initial_step"] >= v["max_train_steps"]),
         "--initial_step must be less than --max_train_steps"),
        ("error", lambda v, e: (v["initial_epoch"] is not None and v["max_train_epochs"] is not None
                                and v["initial_epoch"] > v["max_train_epochs"]),
         "--initial_epoch must not exceed --max_train_epochs"),
        ("error", lambda v, e: v["v2"] and not _family(v, e).spec.v2,
         "--v2 is for SD 2.x models; sdxl_train_network.py trains SDXL (use train_network.py --v2)"),
        ("error", lambda v, e: (v["base_weights_multiplier"] is not None
                                and len(v["base_weights_multiplier"]) != len(v["base_weights"] or [])),
         "--base_weights_multiplier must have one value per --base_weights file"),
        ("warning", lambda v, e: not _family(v, e).uses_clip_skip and v["clip_skip"] is not None,
         "--clip_skip is ignored for SDXL (sdxl_train_network.py always uses the penultimate layer)"),
        *pivotal.rules(),
        *workflow_rules(),
    ]


def _family(values: dict[str, Any], entry: str):
    """The family the run would train (no models loaded): the entry's family class with ``--v2``."""
    from sd_train.families import family_class

    return family_class(entry)(v2=values["v2"])


def rule_messages() -> list[tuple[str, str]]:
    """Every rule as ``(level, message)`` (used by tests and documentation)."""
    return [(level, message) for level, _, message in _rules()]


def validate(options: TrainOptions, entry: str) -> list[str]:
    """Check the cross-flag rules of CLI.md §5.12.

    Args:
        options: The parsed options (after ``normalize``).
        entry: ``"sd"`` (train_network.py) or ``"sdxl"`` (sdxl_train_network.py).

    Returns:
        Warning lines of the rules that fired as warnings.

    Raises:
        UserError: The first error rule that fires; the message names both flags.
    """
    values = options.flat()
    notes = []
    for level, condition, message in _rules():
        if not condition(values, entry):
            continue
        if level == "error":
            raise UserError(message)
        notes.append(message)
    return notes
