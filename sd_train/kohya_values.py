"""How kohya reads option values that argparse never checked (docs/CONFIG_VALUES.md).

kohya puts ``--config_file`` values into its namespace without argparse's ``type=`` or ``choices``, and
an empty string passes argparse on the command line too. What such a value does then depends on the code
that reads the option: ``if args.resume:`` treats ``false`` and ``""`` as absent; ``if args.vae is not
None:`` loads a VAE from ``""`` and fails. :data:`READINGS` records that for every string option, and
:func:`_out_of_choices` what kohya does with a file value outside a flag's ``choices``.
:func:`read_values` applies both to the merged options: absent-like values become unset, what kohya fails
on is one line naming the key, the value and what to do, and odd values kohya runs with are kept (or
mapped to what kohya uses) with a warning naming the value used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from library.errors import UserError
from library.text.conditioning import CHUNK
from sd_train.config_file import toml_value
from sd_train.options import option_fields

UNSET = "unset"  # kohya tests the value's truth or never reads it: same as absent
KEEP = "keep"  # a real value to kohya ("" = no prefix, no caption file, AdamW, ...)
DEFAULT = "default"  # kohya runs with it but does something odd: the default is used, with a warning
REFUSE = "refuse"  # kohya uses it as given and fails: one line


@dataclass(frozen=True)
class Reading:
    """What kohya makes of ``""`` (``empty``) and ``false`` (``false``) given for one string option.

    Attributes:
        fix: What to do, shown when the value is refused (or replaced by the default).
        used: kohya reads the option only when this holds for the merged values; otherwise any value is
            ignored, as absent.
    """

    empty: str
    false: str
    fix: str = ""
    used: Callable[[dict], bool] | None = None


def _without_dataset_config(v: dict) -> bool:
    return not v.get("dataset_config")


def _logging_on(v: dict) -> bool:
    return bool(v.get("logging_dir") or v.get("log_with"))


def _huber(v: dict) -> bool:
    return v.get("loss_type") in ("huber", "smooth_l1")


_METADATA_FIX = "remove the key, or write a string (kohya writes false into the file's metadata and fails saving)"


def _readings() -> dict[str, Reading]:
    """One row per string option of both entry points (a test keeps it complete)."""
    r = {
        "pretrained_model_name_or_path": Reading(REFUSE, REFUSE, "give the base model: a .safetensors/.ckpt "
                                                 "file, a diffusers folder or a hub id"),
        "tokenizer_cache_dir": Reading(UNSET, UNSET),
        "dynamo_backend": Reading(REFUSE, REFUSE, "remove the key (default inductor) or name a backend",
                                  used=lambda v: bool(v.get("torch_compile"))),
        "vae": Reading(REFUSE, REFUSE, "remove the key to use the checkpoint's own VAE, or give a VAE file, "
                       "diffusers folder or hub id"),
        "mixed_precision": Reading(REFUSE, REFUSE, 'write "no", "fp16" or "bf16", or remove the key'),
        "train_data_dir": Reading(REFUSE, REFUSE, "give the parent folder of the N_name image folders, or "
                                  "remove the key", used=_without_dataset_config),
        "reg_data_dir": Reading(REFUSE, REFUSE, "remove the key (no regularization images) or give the "
                                "parent folder of the N_name folders", used=_without_dataset_config),
        "in_json": Reading(REFUSE, REFUSE, "remove the key or give the metadata .json file",
                           used=_without_dataset_config),
        "dataset_config": Reading(REFUSE, REFUSE, "remove the key or give the dataset .toml/.json file"),
        "dataset_class": Reading(REFUSE, REFUSE, "remove the key"),
        "resolution": Reading(REFUSE, REFUSE, 'write resolution = "512" or "1024,768", or remove the key '
                              "and set it in the dataset TOML"),
        "resize_interpolation": Reading(REFUSE, REFUSE, "remove the key (area when shrinking, lanczos when "
                                        "enlarging) or name a filter"),
        "caption_extension": Reading(KEEP, REFUSE, 'write caption_extension = ".txt", or remove the key'),
        "caption_extention": Reading(KEEP, REFUSE, "remove the key"),
        "caption_separator": Reading(DEFAULT, REFUSE, 'kohya cannot split tags at an empty separator; using ","'),
        "keep_tokens_separator": Reading(KEEP, REFUSE, "remove the key"),
        "secondary_separator": Reading(UNSET, REFUSE, "remove the key"),
        "caption_prefix": Reading(UNSET, REFUSE, "remove the key"),
        "caption_suffix": Reading(UNSET, REFUSE, "remove the key"),
        "face_crop_aug_range": Reading(REFUSE, REFUSE, 'write face_crop_aug_range = "2.0,4.0", or remove the key'),
        "conditioning_data_dir": Reading(UNSET, UNSET),
        "config_file": Reading(UNSET, UNSET),
        "loss_type": Reading(REFUSE, REFUSE, 'write "l2", "l1", "huber" or "smooth_l1", or remove the key'),
        "huber_schedule": Reading(REFUSE, REFUSE, 'write "snr", "exponential" or "constant", or remove the key',
                                  used=_huber),
        "optimizer_type": Reading(KEEP, REFUSE, "remove the key (AdamW) or name an optimizer"),
        "lr_scheduler": Reading(REFUSE, REFUSE, "remove the key (constant) or name a scheduler"),
        "lr_scheduler_type": Reading(UNSET, UNSET),
        "network_module": Reading(REFUSE, REFUSE, 'write network_module = "networks.lora" (or the plugin to '
                                  "train)"),
        "network_weights": Reading(REFUSE, REFUSE, "remove the key to start a new network, or give the "
                                   "weights file"),
        "output_dir": Reading(REFUSE, REFUSE, "give the output folder"),
        "output_name": Reading(DEFAULT, DEFAULT, "kohya would name the files '.safetensors' or "
                               "'False.safetensors'; using the default names (last.safetensors, …)"),
        "save_precision": Reading(UNSET, UNSET),
        "save_model_as": Reading(DEFAULT, DEFAULT, "kohya would pickle the weights into a file named 'last.' "
                                 "or fail; saving .safetensors"),
        "resume": Reading(UNSET, UNSET),
        "fallback_output_dir": Reading(UNSET, UNSET),  # sd-train's own: no fallback folder
        "training_comment": Reading(KEEP, UNSET),
        "logging_dir": Reading(REFUSE, REFUSE, "remove the key (no logging) or give a folder"),
        "log_with": Reading(REFUSE, REFUSE, 'remove the key (TensorBoard when logging_dir is set) or write '
                            '"tensorboard", "wandb" or "all"'),
        "log_prefix": Reading(UNSET, REFUSE, "remove the key", used=_logging_on),
        "log_tracker_name": Reading(UNSET, REFUSE, "remove the key", used=_logging_on),
        "log_tracker_config": Reading(REFUSE, REFUSE, "remove the key or give the tracker TOML file",
                                      used=_logging_on),
        "wandb_run_name": Reading(UNSET, UNSET),
        "wandb_api_key": Reading(UNSET, UNSET),
        "console_log_level": Reading(REFUSE, REFUSE, 'remove the key (INFO) or write "DEBUG", "INFO", "WARNING", '
                                     '"ERROR" or "CRITICAL"'),
        "console_log_file": Reading(UNSET, UNSET),
        "sample_prompts": Reading(UNSET, UNSET),
        "sample_sampler": Reading(UNSET, UNSET),
    }
    for name in ("title", "author", "description", "license", "tags", "usage_hint", "thumbnail", "merged_from",
                 "trigger_phrase", "preprocessor", "is_negative_embedding"):
        r[f"metadata_{name}"] = Reading(KEEP, REFUSE, _METADATA_FIX)
    for name in ("huggingface_repo_id", "huggingface_repo_type", "huggingface_path_in_repo", "huggingface_token",
                 "huggingface_repo_visibility", "offload_optimizer_device", "offload_optimizer_nvme_path",
                 "offload_param_device", "offload_param_nvme_path"):
        r[name] = Reading(UNSET, UNSET)  # read only by features sd-train refuses or ignores (CLI.md §12)
    for name in ("token_abstraction", "initializer_concept", "embedding_weights", "token_string", "init_word",
                 "weights"):
        r[name] = Reading(UNSET, UNSET)  # new tokens (docs/PIVOTAL.md): an empty word or file is no word or file
    r["config_skip"] = Reading(UNSET, UNSET)  # sd-train additions (docs/DECISIONS.md, issue #16)
    r["ema_save_as"] = Reading(REFUSE, REFUSE, 'write "main" or "both", or remove the key')
    return r


READINGS = _readings()
_AS_GIVEN = Reading(KEEP, REFUSE, "remove the key")  # an option without a row (a test asks for one)


def spell(name: str, value: Any, origin: str) -> str:
    """How the user gave it: ``--vae ""`` on the command line, ``file [table]: vae = ""`` in a file."""
    if origin == "command line":
        return f"--{name} {value if value not in ('', False) else toml_value(value)}"
    return f"{origin}: {name} = {toml_value(value)}"


def _read_absent_like(name: str, value: Any, origin: str, values: dict, default: Any) -> str | None:
    reading = READINGS.get(name, _AS_GIVEN)
    if reading.used is not None and not reading.used(values):
        values[name] = default  # kohya never reads it in this run
        return None
    action = reading.empty if value == "" else reading.false
    if action == KEEP:
        return None
    fix = reading.fix.replace("remove the key", f"drop --{name}") if origin == "command line" else reading.fix
    if action == REFUSE:
        raise UserError(f"{spell(name, value, origin)}: kohya uses this as a value, not as unset, and fails; {fix}")
    values[name] = default
    return f"{spell(name, value, origin)}: {fix}" if action == DEFAULT else None


def max_token_chunks(max_token_length: int) -> int:
    """77-token chunks a caption is cut into for ``--max_token_length`` (kohya's arithmetic, any value)."""
    length = max_token_length + 2
    return len(range(1, length - CHUNK + 2, CHUNK - 2)) if length > CHUNK else 1


def _out_of_choices(name: str, value: Any, values: dict) -> tuple[Any, str] | None:
    """``(value to use, why)`` for a config-file value outside ``name``'s choices (``why`` is the warning);
    ``None`` where kohya fails on the value too."""
    from sd_train.options.sampling import SAMPLERS

    if name == "max_token_length" and isinstance(value, int) and value > 75:
        tokens = (CHUNK - 2) * max_token_chunks(value)
        return value, f"captions use {tokens} tokens ({tokens // (CHUNK - 2)} chunk(s) of 75), as in kohya"
    if name == "dynamo_backend" and not values.get("torch_compile"):
        return value, "ignored: torch_compile is not set (as in kohya)"
    if name == "dynamo_backend" and str(value).lower() in dict(_choices())["dynamo_backend"]:
        return str(value).lower(), f"using {str(value).lower()!r}"
    if name == "huber_schedule" and values.get("loss_type") not in ("huber", "smooth_l1"):
        return value, f"ignored: loss_type is {values.get('loss_type')!r} (as in kohya)"
    if name == "save_precision":
        return None, "saving in the training dtype, as kohya does for names other than float, fp16 and bf16"
    if name == "save_model_as" and str(value).lower() in ("safetensors", "ckpt", "pt"):
        return str(value).lower(), f"saving as .{str(value).lower()} (kohya would pickle the weights into a " \
                                   f"file ending .{value})"
    if name == "console_log_level" and str(value).upper() in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR",
                                                              "FATAL", "CRITICAL"):
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(str(value).upper(), str(value).upper())
        return level, f"using {level}"
    if name == "sample_sampler" and value == "ddpm":  # kohya's hidden DDPM sampler
        return "ddim", "sd-train has no ddpm sampler (kohya keeps it off its list); using ddim"
    if name == "sample_sampler" and value not in SAMPLERS:
        return "ddim", "kohya samples with ddim for a name it does not know; using ddim"
    if name == "resize_interpolation" and value == "box":
        return value, "using box (kohya's image resizing knows it)"
    if name == "log_with" and value in _accelerate_trackers():
        return value, "passed to accelerate, as kohya does"
    if name in ("zero_stage", "offload_optimizer_device", "offload_param_device"):
        return value, "ignored without DeepSpeed"
    return None


def _accelerate_trackers() -> tuple[str, ...]:
    from accelerate.utils import LoggerType

    return tuple(str(t.value) for t in LoggerType)


def _choices() -> list[tuple[str, tuple]]:
    return [(f.name, f.metadata["choices"]) for _, f in option_fields() if f.metadata["choices"]]


def read_values(values: dict, origins: dict[str, str]) -> list[str]:
    """Read the values kohya never passes through argparse the way kohya's code reads them, in place.

    Args:
        values: Merged ``{flag_name: value}`` (file values overridden by the command line).
        origins: ``{flag_name: "file [table]" | "command line"}`` for every value the user gave.

    Returns:
        Warning lines.

    Raises:
        UserError: A value kohya fails on (one line: key, value, what to do).
    """
    notes: list[str] = []
    fields = {f.name: f for _, f in option_fields()}
    for name, origin in origins.items():
        f, value = fields[name], values[name]
        if not f.metadata["flag"] and not f.metadata["nargs"] and (value is False or value == ""):
            note = _read_absent_like(name, value, origin, values, f.default)
            notes += [note] if note else []
    for name, choices in _choices():
        value = values.get(name)
        if name not in origins or value is None or value in choices:
            continue
        reading = _out_of_choices(name, value, values)
        given = f"{spell(name, value, origins[name])}: not one of {', '.join(map(str, choices))}"
        if reading is None:
            raise UserError(f"{given}, and kohya fails on it too; use one of them or remove the key")
        values[name], why = reading
        notes.append(f"{given}; {why}")
    return notes
