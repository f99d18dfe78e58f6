"""Prior-preservation ("class") images from the base model, resumable (``generate_class_images`` and the
trainer's ``--generate_class_images N``).

The checkpoint is loaded with the project's loader (single file, diffusers folder or hub id) and run as
a diffusers pipeline (:func:`library.checkpoint.pipelines.build_diffusers_pipeline`) with the trainer's
sampler names (:mod:`library.models.schedulers`). Image ``i`` is ``class_{i:05d}.png`` rendered with seed
``seed + i`` at ``sizes[i % len(sizes)]``, with the class prompt as its caption, so an interrupted run
resumes where it stopped and gives the same images as an uninterrupted one. A folder that already holds
``num_images`` images (any names) is left alone.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import UserError
from library.io.safetensors_io import atomic_path
from library.prep import files

NAME = "class_{:05d}.png"


@dataclass
class ClassImageJob:
    """What to generate into one folder.

    Attributes:
        folder: the kohya ``N_class`` folder to fill.  num_images: images it should hold in the end.
        prompt / negative_prompt: the class prompt (also the caption) and the negative prompt.
        sizes: ``(w, h)`` sizes used in turn (multiples of 8).  steps, scale: sampling steps and CFG scale.
        seed: seed of image 0 (image ``i`` uses ``seed + i``).
        batch_size: images per pipeline call.  caption_extension: caption file extension.
    """

    folder: Path
    num_images: int
    prompt: str
    negative_prompt: str = ""
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(512, 512)])
    steps: int = 30
    scale: float = 7.5
    seed: int = 0
    batch_size: int = 1
    caption_extension: str = ".txt"

    def check(self) -> None:
        """One-line UserError for values that cannot work (before any model loads)."""
        if self.num_images < 1 or self.steps < 1 or self.batch_size < 1:
            raise UserError(f"{self.folder}: the number of images, --steps and --batch_size must be at least 1")
        if not self.prompt.strip():
            raise UserError(f"{self.folder}: the class prompt is empty; pass --class_prompt (e.g. 'a photo of a dog')")
        bad = [s for s in self.sizes if s[0] % 8 or s[1] % 8 or min(s) < 64]
        if bad:
            raise UserError(f"image size {bad[0][0]}x{bad[0][1]}: sides must be multiples of 8 and at least 64")


def missing(job: ClassImageJob) -> list[int]:
    """Indices still to render: the first ones whose file does not exist, until the folder would hold
    ``num_images`` images (existing images of any name count)."""
    have = len(files.list_images(job.folder)) if job.folder.is_dir() else 0
    todo, i = [], 0
    while have + len(todo) < job.num_images:
        if not (job.folder / NAME.format(i)).exists():
            todo.append(i)
        i += 1
    return todo


def load_pipeline(model: str, *, vae: str | None, v_parameterization: bool, sampler: str, device,
                  dtype: torch.dtype, work_dir: Path):
    """A diffusers pipeline of ``model`` on ``device``/``dtype`` with the ``sampler`` scheduler.

    The base model is loaded with :func:`library.checkpoint.io.load_models` and exported under ``work_dir``
    (a diffusers folder with its tokenizers is used as it is); the loaded copy is freed before returning.
    """
    from library.checkpoint import hub
    from library.checkpoint.io import load_models
    from library.checkpoint.pipelines import build_diffusers_pipeline
    from library.models.schedulers import make_scheduler

    models = load_models(hub.local_path(model, hub.MODEL_FILES), vae_path=vae and hub.local_path(vae, hub.VAE_FILES))
    pipe = build_diffusers_pipeline(models, work_dir, dtype=dtype)
    del models
    gc.collect()
    pipe.scheduler = make_scheduler(sampler, v_parameterization)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def render(pipe, job: ClassImageJob, indices: list[int]) -> list:
    """PIL images for ``indices`` of ``job`` (all of one size), in one pipeline call."""
    w, h = job.sizes[indices[0] % len(job.sizes)]
    gens = [torch.Generator(device="cpu").manual_seed(job.seed + i) for i in indices]
    return pipe(prompt=[job.prompt] * len(indices), negative_prompt=[job.negative_prompt] * len(indices),
                width=w, height=h, num_inference_steps=job.steps, guidance_scale=job.scale, generator=gens).images


def fill_folder(pipe, job: ClassImageJob, progress=None) -> int:
    """Render and write the missing images of ``job`` (image, then its caption, each atomically).

    Returns:
        The number of images written.
    """
    todo = missing(job)
    groups: dict = {}
    for i in todo:
        groups.setdefault(i % len(job.sizes), []).append(i)
    for group in groups.values():
        for start in range(0, len(group), job.batch_size):
            batch = group[start:start + job.batch_size]
            for i, image in zip(batch, render(pipe, job, batch)):
                path = job.folder / NAME.format(i)
                with atomic_path(path) as tmp:
                    image.save(tmp)
                files.write_text(files.caption_path(path, job.caption_extension), job.prompt + "\n")
                if progress is not None:
                    progress.update(1)
    return len(todo)


def generate(model: str, jobs: list[ClassImageJob], *, sampler: str = "ddim", vae: str | None = None,
             v_parameterization: bool = False, device=None, dtype: torch.dtype = torch.float32,
             progress_factory=None) -> int:
    """Fill every job's folder, loading the base model only when some image is missing; frees it after.

    Returns:
        The number of images written (0 when every folder is full, without loading anything).
    """
    for job in jobs:
        job.check()
    todo = sum(len(missing(job)) for job in jobs)
    if not todo:
        return 0
    for job in jobs:
        files.check_writable(job.folder, "class image folder")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bar = progress_factory(todo) if progress_factory else None
    with tempfile.TemporaryDirectory(prefix=".class-images-", dir=jobs[0].folder.parent) as work:
        pipe = load_pipeline(model, vae=vae, v_parameterization=v_parameterization, sampler=sampler,
                             device=device, dtype=dtype, work_dir=Path(work))
        written = sum(fill_folder(pipe, job, bar) for job in jobs)
        del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if bar is not None:
        bar.close()
    return written
