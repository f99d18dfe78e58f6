"""SD/SDXL VAE configs for diffusers' ``AutoencoderKL``.

The tiny config keeps 4 levels and 2 layers per block so LDM names (FORMAT.md §10.4) match the
real VAE.
"""

from __future__ import annotations


def vae_config(tiny: bool = False) -> dict:
    """Return ``AutoencoderKL`` kwargs (JSON-serializable) for the SD VAE (4 latent channels).

    Args:
        tiny: Small test model (16-64 channels, 8 norm groups; channel changes as in the full VAE) with the same names.
    """
    cfg = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
    }
    if tiny:
        cfg.update(block_out_channels=[16, 32, 64, 64], norm_num_groups=8, sample_size=64)
    return cfg


def build_vae(config: dict):
    """Build a ``diffusers.AutoencoderKL`` from :func:`vae_config` kwargs (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)
