"""Network plugin options (CLI.md §5.8)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt


@dataclass(frozen=True)
class NetworkOptions:
    """Which network plugin to train and how it is built."""

    network_module: str | None = opt(
        None, "Network plugin module by dotted name (networks.lora, lycoris.kohya)", common=True)
    network_dim: int | None = opt(None, "Rank; unset lets the plugin choose", type=int, common=True)
    network_alpha: float = opt(1, "Alpha; scale = alpha / rank", type=float, common=True)
    network_dropout: float | None = opt(None, "Dropout on the rank activations (neuron_dropout)", type=float)
    network_args: list[str] | None = opt(None, "key=value strings passed to the plugin", nargs="*", common=True)
    network_train_unet_only: bool = flag("Train UNet modules only", common=True)
    network_train_text_encoder_only: bool = flag("Train text-encoder modules only")
    network_weights: str | None = opt(None, "Load these network weights before training")
    dim_from_weights: bool = flag("Build the network from --network_weights (ranks and alphas from the file)")
    scale_weight_norms: float | None = opt(None, "Max-norm regularization of each module's delta weight", type=float)
    base_weights: list[str] | None = opt(None, "LoRA files merged into the base model before training", nargs="*")
    base_weights_multiplier: list[float] | None = opt(
        None, "Multiplier per --base_weights file (1.0 each when unset)", type=float, nargs="*")
