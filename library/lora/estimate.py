"""Size of a kohya LoRA before it exists: modules, parameters and file bytes from a checkpoint's header.

The module set is :func:`library.lora.convert.checkpoint_targets` (the names ``networks.lora`` creates,
checked against kohya's golden key lists), so the estimate needs only the base model's safetensors
header, never its tensors. Per-block ranks (``block_dims``) are not modelled: every Linear / 1×1 module
gets ``dim``, every k×k convolution ``conv_dim`` (none without it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

from library.lora.convert import checkpoint_targets

_HEADER_ENTRY = '"":{"dtype":"F16","shape":[0000,0000],"data_offsets":[000000000,000000000]},'


@dataclass(frozen=True)
class LoraEstimate:
    """What a LoRA of one configuration will hold.

    Attributes:
        modules: number of LoRA modules (each: ``lora_down``, ``lora_up``, ``alpha``).
        unet_modules / te_modules: of them, on the UNet / on the text encoder(s).
        params: trainable parameters (``lora_down`` + ``lora_up`` elements).
        file_bytes: size of the ``.safetensors`` file in the save precision.
    """

    modules: int
    unet_modules: int
    te_modules: int
    params: int
    file_bytes: int


def _geometry(shape: list[int], chunk: int | None) -> tuple[int, int, int]:
    """``(in_features, out_features, kernel area)`` of a target weight (an OpenCLIP ``in_proj`` third)."""
    out, inp = shape[0], shape[1]
    if chunk is not None:
        out //= 3
    area = math.prod(shape[2:]) if len(shape) > 2 else 1
    return inp, out, area


def estimate_lora(shapes: Mapping[str, list[int]], family: str, dim: int, conv_dim: int | None = None, *,
                  unet: bool = True, text_encoders: bool = True, bytes_per_value: int = 2,
                  metadata_bytes: int = 0) -> LoraEstimate:
    """Estimate the LoRA that ``networks.lora`` makes for a single-file checkpoint.

    Args:
        shapes: checkpoint key -> shape (from :func:`estimate_from_header` or a state dict).
        family: ``sd1``, ``sd2`` or ``sdxl``.
        dim: ``--network_dim`` (Linear and 1×1 convolutions).
        conv_dim: ``conv_dim`` of ``--network_args`` (k×k convolutions), or ``None``.
        unet / text_encoders: which parts get modules (the file holds only those that train).
        bytes_per_value: 4 for fp32, 2 for fp16/bf16 saves.
        metadata_bytes: length of the ``__metadata__`` JSON.
    """
    modules = unet_n = te_n = params = header = 0
    for name, (key, chunk) in checkpoint_targets(shapes, family, conv=conv_dim is not None).items():
        is_unet = name.startswith("lora_unet_")
        if (is_unet and not unet) or (not is_unet and not text_encoders):
            continue
        inp, out, area = _geometry(list(shapes[key]), chunk)
        rank = conv_dim if area > 1 else dim
        if not rank:
            continue
        modules, unet_n, te_n = modules + 1, unet_n + is_unet, te_n + (not is_unet)
        params += rank * inp * area + out * rank
        header += 3 * (len(name) + len(_HEADER_ENTRY) + len(".lora_down.weight"))
    data = (params + modules) * bytes_per_value  # the alphas are saved in the same dtype
    header += metadata_bytes + len('{"__metadata__":{},}')
    return LoraEstimate(modules, unet_n, te_n, params, 8 + header + (-header % 8) + data)


def header_shapes(path: str) -> dict[str, list[int]] | None:
    """Tensor shapes of a ``.safetensors`` checkpoint from its header alone (``None`` for other files)."""
    from library.io.safetensors_io import read_header

    if not str(path).endswith(".safetensors"):
        return None
    tensors, _ = read_header(path)
    return {k: list(v["shape"]) for k, v in tensors.items()}


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of a metadata dict as safetensors stores it (JSON of strings)."""
    return len(json.dumps({k: str(v) for k, v in metadata.items()}, separators=(",", ":")))
