"""Differential output preservation, "DOP" (TRAINING.md §5 item 7; DATASET.md ``custom_attributes``).

A sample whose subset sets ``custom_attributes.diff_output_preservation = true`` gets, as its target, the
UNet's own prediction with the network switched off (multiplier 0) for the same noisy latents, timesteps and
text conditioning. The loss then teaches the network to leave such samples' outputs unchanged. Only those
rows run through the UNet a second time, without gradient; a batch without them costs nothing extra.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import torch

DOP_KEY = "diff_output_preservation"


def wants_preservation(attributes: dict | None) -> bool:
    """Whether one sample's ``custom_attributes`` ask for DOP (any truthy value, as kohya tests it)."""
    return bool((attributes or {}).get(DOP_KEY))


def preservation_rows(batch: dict) -> list[int]:
    """Indices of the samples of ``batch`` that ask for DOP (``batch["custom_attributes"]``: one dict each)."""
    return [i for i, attrs in enumerate(batch.get("custom_attributes") or []) if wants_preservation(attrs)]


def current_multiplier(host) -> float:
    """The network's multiplier before DOP changes it: its scalar ``multiplier`` attribute, else 1.0.

    Args:
        host: the :class:`sd_train.network_host.NetworkHost` holding the created network.
    """
    value = getattr(host.network, "multiplier", 1.0)  # kohya-compat: networks.lora and LyCORIS keep it there
    return float(value) if isinstance(value, (int, float)) else 1.0


def check_support(host, datasets: Iterable[Any]) -> bool:
    """Setup check: when any subset asks for DOP, the plugin must have ``set_multiplier``.

    Args:
        host: the NetworkHost with its network created.
        datasets: prepared datasets (training and validation), each with ``subsets[i].spec.custom_attributes``.

    Returns:
        Whether any subset asks for DOP.

    Raises:
        UserError: a subset asks for DOP and the plugin has no ``set_multiplier`` (one line, from the host).
    """
    if not any(wants_preservation(s.spec.custom_attributes) for ds in datasets for s in ds.subsets):
        return False
    host.set_multiplier(current_multiplier(host))  # same value: only proves the plugin supports it
    return True


def _pick(value: Any, rows: list[int], n: int) -> Any:
    """``value`` restricted to ``rows`` when it is per-sample (leading size ``n``); else unchanged."""
    if torch.is_tensor(value):
        return value[rows] if value.dim() > 0 and value.shape[0] == n else value
    if isinstance(value, tuple):  # e.g. cached text-encoder outputs (hidden1, hidden2, pool2)
        return tuple(_pick(v, rows, n) for v in value)
    if isinstance(value, list) and len(value) == n:
        return [value[i] for i in rows]
    return value


def select_rows(batch: dict, conds: Any, rows: list[int], n: int) -> tuple[dict, Any]:
    """The batch dict and the conditioning (a dataclass such as ``Conds``) of the samples ``rows`` only."""
    sub_batch = {k: _pick(v, rows, n) for k, v in batch.items()}
    if dataclasses.is_dataclass(conds):
        return sub_batch, dataclasses.replace(conds, **{f.name: _pick(getattr(conds, f.name), rows, n)
                                                        for f in dataclasses.fields(conds)})
    return sub_batch, _pick(conds, rows, n)


def prior_prediction(trainer, batch: dict, x_t: torch.Tensor, t: torch.Tensor, conds: Any,
                     rows: list[int]) -> torch.Tensor:
    """UNet prediction (len(rows), 4, h, w) of ``rows`` with the network multiplier at 0, without gradient.

    The multiplier the network had before is restored afterwards, also on errors (kohya always sets 1.0;
    the trainer creates the network at 1.0, so both agree).
    """
    host, n = trainer.host, x_t.shape[0]
    sub_batch, sub_conds = select_rows(batch, conds, rows, n)
    before = current_multiplier(host)
    host.set_multiplier(0.0)
    try:
        with torch.no_grad(), trainer.accelerator.autocast():
            return trainer.family.predict(trainer.models.unet, x_t[rows].to(trainer.weight_dtype), t[rows],
                                          sub_conds, sub_batch)
    finally:
        host.set_multiplier(before)  # sd-train: the previous value; kohya always sets 1.0


def preserve_outputs(trainer, batch: dict, x_t: torch.Tensor, t: torch.Tensor, conds: Any,
                     target: torch.Tensor) -> torch.Tensor:
    """``target`` with the DOP samples' rows replaced by their prior prediction (TRAINING.md §5 item 7).

    Args:
        trainer: the trainer (``host``, ``family``, ``models.unet``, ``accelerator``, ``weight_dtype``).
        batch: the batch dict (``custom_attributes``: one dict per sample; SDXL size keys).
        x_t: noisy latents (B, 4, h, w) of the main prediction.
        t: timesteps (B,) long.
        conds: the batch's text conditioning (as given to ``family.predict``).
        target: ε or v (B, 4, h, w) float32; v-parameterization needs nothing special, the prior is a v too.

    Returns:
        ``target`` itself when no sample asks for DOP; else a copy with those rows substituted (no gradient).
    """
    rows = preservation_rows(batch)
    if not rows:
        return target
    prior = prior_prediction(trainer, batch, x_t, t, conds, rows)
    target = target.clone()
    target[rows] = prior.to(target.device, target.dtype)
    return target
