"""Model definitions built from config dataclasses (full size and tiny): the SDXL UNet, the SD1/SD2
UNet configs, the CLIP text encoders and the VAE, fp8 storage of frozen weights (``fp8``), the
family descriptions (``families``: the one place that knows how SD1, SD2 and SDXL differ) and which
family a file belongs to (``detect``). Loading weights into these models is ``library.checkpoint``'s job.

May import: ``library.errors``.
"""
