"""SD1.x / SD2.x UNet configs for diffusers' ``UNet2DConditionModel``.

Configs are plain kwargs dicts (JSON-serializable, stored in tiny checkpoints' metadata). Full
configs follow the released models; tiny configs keep 4 levels and ``layers_per_block=2`` so the
LDM block indices (FORMAT.md §9.2 / §10.1) are the same as in the real models.
"""

from __future__ import annotations

_VARIANTS = ("sd1", "sd2", "sd2-v")


def sd_unet_config(variant: str, tiny: bool = False) -> dict:
    """Return ``UNet2DConditionModel`` kwargs for an SD1/SD2 UNet.

    Args:
        variant: ``"sd1"``, ``"sd2"`` (512 px, epsilon) or ``"sd2-v"`` (768 px, v-prediction).
        tiny: Small random-weight test model with the same module names.

    Returns:
        A JSON-serializable kwargs dict (lists, not tuples).

    Raises:
        ValueError: unknown variant.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"unknown SD UNet variant {variant!r}; expected one of {_VARIANTS}")
    v2 = variant != "sd1"
    cfg = {
        "sample_size": 96 if variant == "sd2-v" else 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "cross_attention_dim": 1024 if v2 else 768,
        "attention_head_dim": [5, 10, 20, 20] if v2 else 8,
        "use_linear_projection": v2,
    }
    if tiny:
        cfg.update(
            sample_size=8,
            block_out_channels=[16, 32, 64, 64],  # channel changes where the full model has them
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=[2, 4, 8, 8] if v2 else 2,
        )
    return cfg


def build_sd_unet(config: dict):
    """Build a ``diffusers.UNet2DConditionModel`` from :func:`sd_unet_config` kwargs.

    Weights are randomly initialized; build under ``torch.device("meta")`` to skip allocation.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)
