"""The one table of kohya flags that sd-train accepts but does not honour (CLI.md §12).

Every kohya flag parses. The flags below are either ignored with a warning or rejected with a
:class:`UserError` when they are set; ``check_unsupported`` applies the table to a flat namespace.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from library.errors import UserError

IGNORE = "ignore"
REJECT = "reject"
INFO = "info"


@dataclass(frozen=True)
class Unsupported:
    """One row of the table.

    Attributes:
        flag: kohya flag name (attribute name, no dashes).
        action: ``"reject"`` (UserError), ``"ignore"`` (warning) or ``"info"`` (note only).
        message: The line shown when the flag is set.
        unless: Another flag; the row applies only when that flag is NOT set (``None``: always).
    """

    flag: str
    action: str
    message: str
    unless: str | None = None


GUI_ONLY_KEYS = {  # kohya-compat: kohya_ss GUI settings it writes into --config_file; sd-scripts ignores them
    "epoch": "delete it; max_train_epochs / max_train_steps set the run length",
    "noise_offset_type": "delete it; noise_offset or multires_noise_iterations choose the noise",
    "lowvram": "delete it",
    "train_inpainting": "delete it; sd-scripts has no such option",
    **{k: f'move it into network_args, e.g. network_args = ["{k}=16"]'
       for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")},
}
_DS = "DeepSpeed is not supported by sd-train; remove --deepspeed"
_DS_IGNORED = "is a DeepSpeed option and is ignored without --deepspeed"
_HUB = "uploading to or resuming from the Hugging Face Hub is not supported by sd-train; remove --{}"


def _table() -> tuple[Unsupported, ...]:
    ds_flags = ("zero_stage", "offload_optimizer_device", "offload_optimizer_nvme_path", "offload_param_device",
                "offload_param_nvme_path", "zero3_init_flag", "zero3_save_16bit_model",
                "fp16_master_weights_and_gradients")
    hub_reject = ("huggingface_repo_id", "save_state_to_huggingface", "resume_from_huggingface")
    hub_ignore = ("huggingface_repo_type", "huggingface_path_in_repo", "huggingface_token",
                  "huggingface_repo_visibility", "async_upload")
    rows = [Unsupported("deepspeed", REJECT, _DS)]
    rows += [Unsupported(f, IGNORE, f"--{f} {_DS_IGNORED}", unless="deepspeed") for f in ds_flags]
    rows += [Unsupported(f, REJECT, _HUB.format(f)) for f in hub_reject]
    rows += [Unsupported(f, IGNORE, f"--{f} is ignored: Hugging Face Hub upload is not supported") for f in hub_ignore]
    rows += [
        Unsupported("dataset_class", REJECT,
                    "--dataset_class is not supported by sd-train; use --dataset_config with a dataset TOML"),
        Unsupported("fused_backward_pass", IGNORE,
                    "--fused_backward_pass is ignored: kohya uses it only for full fine-tuning"),
        Unsupported("cpu_offload_checkpointing", IGNORE,
                    "--cpu_offload_checkpointing is ignored: kohya implements it only for DiT models"),
        Unsupported("mem_eff_attn", INFO, "--mem_eff_attn: using PyTorch SDPA attention"),
        Unsupported("highvram", IGNORE,
                    "--highvram has no effect: sd-train never empties the CUDA cache while caching"),
    ]
    rows += [Unsupported(f, IGNORE, f"--{f} is ignored: sd-train averages the network's gradients itself, "
                                    "no DDP hook runs") for f in ("ddp_gradient_as_bucket_view", "ddp_static_graph")]
    return tuple(rows)


def unsupported_table() -> tuple[Unsupported, ...]:
    """The table rows (a fresh tuple; used by tests and the README generator)."""
    return _table()


def _is_set(value) -> bool:
    return value not in (None, False, "", [])


def check_unsupported(ns: argparse.Namespace) -> list[str]:
    """Apply the table to kohya's flat namespace.

    ``zero_stage`` counts as set only when it differs from its default 2.

    Args:
        ns: Flat options (``TrainOptions.namespace()``).

    Returns:
        Warning / info lines for ignored flags that are set.

    Raises:
        UserError: The first rejected flag that is set.
    """
    notes: list[str] = []
    for row in _table():
        value = getattr(ns, row.flag, None)
        if row.flag == "zero_stage":
            value = value if value != 2 else None
        if not _is_set(value):
            continue
        if row.unless and _is_set(getattr(ns, row.unless, None)):
            continue
        if row.action == REJECT:
            raise UserError(row.message)
        notes.append(row.message)
    return notes
