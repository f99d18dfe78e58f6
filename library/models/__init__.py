"""Model definitions built from config dataclasses (full size and tiny): the SDXL UNet, the SD1/SD2
UNet configs, the CLIP text encoders and the VAE, plus fp8 storage of frozen weights (``fp8``).

May import: ``library.errors`` only (loading weights into these models is ``library.checkpoint``).
"""
