"""Which family a file belongs to: checkpoints by their keys, diffusers folders by their configs, LoRAs by
their module names, shapes and metadata. Each returns a family name of :mod:`library.models.families`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from library.errors import UserError
from library.models.families import SD1, SD2, SDXL

UNET_PREFIX = "model.diffusion_model."
LORA_FIT_ORDER = (SDXL, SD1, SD2)  # preference when several families fit a LoRA's module names equally


def family_of_checkpoint(keys: Iterable[str]) -> str:
    """The family of a full single-file checkpoint: the one whose last text encoder's keys are present.

    Raises:
        UserError: no known text-encoder prefix (not an SD checkpoint).
    """
    keys = list(keys)
    for spec in (SDXL, SD2, SD1):
        prefix = spec.text_encoders[-1].checkpoint_prefix
        if any(k.startswith(prefix) for k in keys):
            return spec.name
    raise UserError("checkpoint has no SD1/SD2/SDXL text-encoder keys (cond_stage_model.* / conditioner.embedders.*);"
                    " is this a LoRA or a VAE? pass a full Stable Diffusion checkpoint")


def family_of_keys(keys: Iterable[str]) -> str:
    """The family of a possibly partial checkpoint (LoRA tools): any of its text-encoder prefixes; UNet-only
    files count as SD1.

    Raises:
        UserError: neither text-encoder nor UNet keys.
    """
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return SDXL.name
    for spec in (SD2, SD1):
        if any(k.startswith(spec.text_encoders[0].checkpoint_prefix) for k in keys):
            return spec.name
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return SD1.name
    raise UserError("not a Stable Diffusion single-file checkpoint (no model.diffusion_model.* keys)")


def family_of_folder(subfolders: set[str], te_config: Callable[[], dict]) -> str | None:
    """The family of a diffusers folder from its sub-folders and (read only when needed) the first text
    encoder's ``config.json``: OpenCLIP-H (1024 wide or gelu) is SD2.

    Returns:
        A family name, or ``None`` when the folder lacks ``unet/`` or ``text_encoder/``.
    """
    if SDXL.text_encoders[1].diffusers_folder in subfolders:
        return SDXL.name
    if not {"unet", SD1.text_encoders[0].diffusers_folder} <= subfolders:
        return None
    cfg = te_config()
    return SD2.name if cfg.get("hidden_size") == 1024 or cfg.get("hidden_act") == "gelu" else SD1.name


def family_of_lora(names: Iterable[str], shapes: Mapping[str, tuple] | None = None,
                   metadata: Mapping[str, str] | None = None) -> str:
    """Guess the family of a kohya-named LoRA from its module names, down shapes and metadata."""
    names = list(names)
    md = metadata or {}
    sgm = tuple(s.lora_prefix + "_" for s in SDXL.text_encoders) + (
        "lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block")
    if any(n.startswith(sgm) for n in names) or md.get("ss_base_model_version", "").startswith("sdxl"):
        return SDXL.name
    if md.get("ss_v2") == "True":
        return SD2.name
    for n, shape in (shapes or {}).items():
        if (n.startswith("lora_te_") and len(shape) > 1 and shape[1] == 1024
                or n.endswith("attn2_to_k") and shape[1] == 1024):
            return SD2.name
        if n.endswith("attn2_to_k") and shape[1] == 2048:
            return SDXL.name
    return SD1.name


_SGM_UNET_NAMES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
_DIFFUSERS_UNET_NAMES = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")


def lora_name_families(names: Iterable[str]) -> list:
    """The families (in :data:`LORA_FIT_ORDER`) whose kohya LoRA naming occurs in ``names``: their text-encoder
    prefixes (``lora_te_``, ``lora_te1_`` …) or their UNet naming (SGM ``input_blocks`` or diffusers paths).
    Empty when no name has a family's form (a third-party plugin's own names, say)."""
    names = list(names)

    def signs(spec) -> tuple[str, ...]:
        unet = _SGM_UNET_NAMES if spec.sgm_unet else _DIFFUSERS_UNET_NAMES
        return (*(slot.lora_prefix + "_" for slot in spec.text_encoders), *unet)

    return [spec for spec in LORA_FIT_ORDER if any(n.startswith(signs(spec)) for n in names)]


def family_of_peft(down_shapes: Mapping[tuple[str, str], tuple]) -> str:
    """Guess the family of a PEFT / diffusers LoRA from ``{(component, module path): lora_A shape}``."""
    if any(comp == SDXL.text_encoders[1].diffusers_folder for comp, _ in down_shapes):
        return SDXL.name
    for (comp, path), shape in down_shapes.items():
        width = shape[1] if len(shape) > 1 else 0
        if path.endswith("attn2.to_k") and width in (1024, 2048):
            return SD2.name if width == 1024 else SDXL.name
        if comp == "text_encoder" and path.endswith("q_proj") and width == 1024:
            return SD2.name
    return SD1.name
