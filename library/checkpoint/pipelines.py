"""A diffusers pipeline built from sd-train's loaded models (offline).

The models are exported with :func:`library.checkpoint.diffusers_export.save_diffusers_folder` and loaded back
with ``from_pretrained(folder, local_files_only=True)``, so the pipeline uses diffusers' and
transformers' own module classes. It is the bridge used to prove that sd-train LoRA files load in
diffusers (``pipe.load_lora_weights(path)``) and to render a preview in the quickstart.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def build_diffusers_pipeline(models, tmp_dir: str | os.PathLike, *, dtype: torch.dtype | None = None):
    """Export ``models`` under ``tmp_dir`` and load them as a diffusers pipeline.

    Args:
        models: A :class:`library.checkpoint.io.LoadedModels` (SD1, SD2 or SDXL).
        tmp_dir: A folder that may be written; the pipeline folder is ``tmp_dir/diffusers_<family>``
            (an existing one is reused).
        dtype: Weight dtype of the pipeline; ``None`` keeps the stored dtypes.

    Returns:
        ``StableDiffusionXLPipeline`` (SDXL) or ``StableDiffusionPipeline`` (SD1/SD2, no safety
        checker), on the CPU. Render with ``pipe(prompt, num_inference_steps=4, height=64, width=64,
        generator=torch.Generator().manual_seed(0))``.
    """
    import diffusers

    from library.checkpoint.diffusers_export import save_diffusers_folder
    from library.models.families import family_spec

    folder = Path(tmp_dir) / f"diffusers_{models.family}"
    if not (folder / "model_index.json").is_file():
        save_diffusers_folder(models, folder, dtype=dtype)
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    spec = family_spec(models.family)
    return getattr(diffusers, spec.pipeline).from_pretrained(str(folder), **spec.pipeline_kwargs, **kwargs)
