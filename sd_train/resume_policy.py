"""Which options may change when a run resumes from an sd-train state folder (checked before models load).

sd-train: kohya resumes whatever changed, and silently keeps the saved learning rates (its scheduler state
overwrites them). Here the options are sorted in two kinds:

- :data:`REFUSED` change the data order, the network or the optimizer state the folder holds; a resume with a
  different value is refused with the list of differences (``--initial_step`` still forces it).
- :data:`SCHEDULE` change only the rates, the schedule, the run length or the loss; they take effect from the
  resumed step, with a warning that lists them and says the run is no longer bit-exact.

Everything else (save cadence, sampling, logging, validation) may change freely: it never moves the weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from library.errors import UserError

REFUSED = ("dataset", "train_batch_size", "gradient_accumulation_steps", "seed", "network_module", "network_dim",
           "network_alpha", "network_args", "network_train_unet_only",
           "network_train_text_encoder_only", "optimizer_type", "optimizer_args")
SCHEDULE = ("learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "lr_decay_steps",
            "lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_timescale", "lr_scheduler_min_lr_ratio",
            "lr_scheduler_type", "lr_scheduler_args", "max_train_steps", "loss_type", "huber_c", "network_dropout",
            "noise_offset", "multires_noise_iterations", "ip_noise_gamma", "min_snr_gamma",
            "stop_text_encoder_training", "train_text_encoder_frac")


def data_order_fingerprint(prepared) -> str:
    """Hash of what fixes the batches of an epoch: images, buckets, repeats and batch sizes of every dataset."""
    items = [[ds.spec.batch_size, [[r.path, list(r.bucket), r.num_repeats, r.is_reg] for r in ds.records]]
             for ds in prepared.train]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def policy_values(options, *, seed: int, max_train_steps: int, prepared) -> dict[str, Any]:
    """The values :func:`compare` looks at, as JSON-ready data (stored in ``train_state.json``)."""
    flat = options.flat()
    values = {k: flat.get(k) for k in (*REFUSED, *SCHEDULE)}
    values.update(seed=seed, max_train_steps=max_train_steps, dataset=data_order_fingerprint(prepared))
    return json.loads(json.dumps(values, default=str))


def compare(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(refused, changed)``: ``"name old → new"`` lines for the options of each kind that differ."""
    def differ(keys):
        return [f"{k} {saved[k]} → {current[k]}" if k != "dataset" else "dataset (images, buckets, repeats or "
                "batch size)" for k in keys if k in saved and k in current and saved[k] != current[k]]

    return differ(REFUSED), differ(SCHEDULE)


def check(folder: str, saved: dict[str, Any] | None, current: dict[str, Any], global_step: int,
          forced: bool) -> list[str]:
    """Apply the policy to a state's saved values; returns the changed schedule options (warned by the caller).

    Raises:
        UserError: a refused option differs (unless ``forced`` by ``--initial_step``/``--initial_epoch``), or the
            new run length leaves nothing to train.
    """
    if saved is None:  # kohya states and older sd-train states: nothing to compare here
        return []
    refused, changed = compare(saved, current)
    if refused and not forced:
        raise UserError(f"--resume {folder}: the state was saved with different options that change the data "
                        f"order or the network: {', '.join(refused)}; use the saved values (or pass "
                        "--initial_step to start from it anyway)")
    if current["max_train_steps"] <= global_step and not forced:
        raise UserError(f"--resume {folder}: the state is at step {global_step} and the run has "
                        f"{current['max_train_steps']} steps; raise --max_train_steps (or --max_train_epochs)")
    return changed
