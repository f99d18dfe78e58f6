"""sd-train's workflow additions: EMA of the network weights (sd_train/ema.py) and the rules of the
EMA and text-encoder-stop flags (sd_train/te_stop.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sd_train.options.base import flag, opt

EMA_DECAY, EMA_EVERY = 0.999, 1


@dataclass(frozen=True)
class EmaOptions:
    """An exponential moving average of the trained network parameters, saved and sampled instead of them."""

    ema: bool = flag("Keep an exponential moving average (EMA) of the network weights", ours=True)
    ema_decay: float = opt(EMA_DECAY, "EMA decay: ema = decay * ema + (1 - decay) * weights", type=float, ours=True)
    ema_update_every: int = opt(EMA_EVERY, "Update the EMA every N optimizer steps", type=int, ours=True)
    ema_warmup: bool = flag("Ramp the decay up as min(decay, (1 + t) / (10 + t)) from step t = 0", ours=True)
    ema_on_cpu: bool = flag("Keep the EMA weights in RAM instead of on the GPU", ours=True)
    ema_save_as: str = opt("main", "main: the EMA weights are NAME.safetensors; both: the trained weights too, "
                           "as NAME.safetensors next to NAME-ema.safetensors", choices=("main", "both"), ours=True)
    ema_for_sampling: bool = flag("Sample images and compute validation loss with the EMA weights", ours=True)


def _ema_tuned(v: dict) -> bool:
    return (v["ema_decay"] != EMA_DECAY or v["ema_update_every"] != EMA_EVERY or v["ema_save_as"] != "main"
            or v["ema_warmup"] or v["ema_on_cpu"] or v["ema_for_sampling"])


def _te_stop(v: dict) -> bool:
    return v["stop_text_encoder_training"] is not None or v["train_text_encoder_frac"] is not None


def workflow_rules() -> list[tuple[str, Callable[[dict, str], bool], str]]:
    """``(level, condition(values, entry), message)`` rules of the EMA and text-encoder-stop flags."""
    return [
        ("error", lambda v, e: not 0 <= v["ema_decay"] <= 1, "--ema_decay must be between 0 and 1"),
        ("error", lambda v, e: v["ema_update_every"] < 1, "--ema_update_every must be at least 1"),
        ("warning", lambda v, e: not v["ema"] and _ema_tuned(v), "--ema_* options have no effect without --ema"),
        ("error", lambda v, e: v["stop_text_encoder_training"] is not None and v["train_text_encoder_frac"] is not None,
         "--stop_text_encoder_training and --train_text_encoder_frac are both set; keep one"),
        ("error", lambda v, e: v["stop_text_encoder_training"] is not None and v["stop_text_encoder_training"] < 1,
         "--stop_text_encoder_training must be at least 1 (to train no text encoder, use --network_train_unet_only)"),
        ("error", lambda v, e: v["train_text_encoder_frac"] is not None and not 0 < v["train_text_encoder_frac"] <= 1,
         "--train_text_encoder_frac must be in (0, 1]: the fraction of max_train_steps with the text encoder trained"),
        ("error", lambda v, e: _te_stop(v) and v["network_train_text_encoder_only"],
         "--stop_text_encoder_training / --train_text_encoder_frac with --network_train_text_encoder_only would "
         "leave nothing to train after the stop"),
        ("warning", lambda v, e: _te_stop(v) and (v["network_train_unet_only"] or v.get("cache_text_encoder_outputs")),
         "--stop_text_encoder_training / --train_text_encoder_frac have no effect: the text encoder is not trained "
         "(--network_train_unet_only)"),
    ]
