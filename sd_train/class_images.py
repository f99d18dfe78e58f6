"""``--generate_class_images N`` (DreamBooth-extension style): before training, fill the folder of every
regularization subset up to N images generated from the base model, with the class tokens as prompt and
caption, at the dataset's resolution. Runs the class-image tool's code (:mod:`library.prep.class_images`);
the base model is loaded only when an image is missing, and freed before the models load for training.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import torch

from library.dataset.config import CliDefaults
from library.dataset.plan import build_plan
from library.errors import UserError
from library.lora.file import DTYPES
from library.prep.class_images import ClassImageJob, generate
from sd_train.distributed import process_state

logger = logging.getLogger(__name__)


def class_jobs(trainer, count: int) -> list[ClassImageJob]:
    """One job per regularization subset of the run's dataset plan (seeded with the run seed)."""
    flat = trainer.opts.flat()
    plan = build_plan(CliDefaults(**{f.name: flat[f.name] for f in fields(CliDefaults) if f.name in flat}))
    jobs = []
    for ds in plan.datasets:
        for sub in ds.subsets:
            if sub.is_reg and sub.image_dir:
                prompt = sub.class_tokens or Path(sub.image_dir).name.partition("_")[2]
                jobs.append(ClassImageJob(Path(sub.image_dir), count, prompt, sizes=[tuple(ds.resolution)],
                                          seed=trainer.seed, caption_extension=sub.caption_extension))
    return jobs


def fill_reg_subsets(trainer) -> int:
    """Generate the missing class images of ``--generate_class_images`` (main process; the others wait).

    Returns:
        Images written by this process.

    Raises:
        UserError: N < 1, or no regularization subset to fill.
    """
    count = trainer.opts.dataset.generate_class_images
    if count is None:
        return 0
    if count < 1:
        raise UserError(f"--generate_class_images {count}: must be at least 1")
    jobs = class_jobs(trainer, count)
    if not jobs:
        raise UserError("--generate_class_images: the dataset has no regularization subset to fill; add one "
                        "(is_reg = true with class_tokens, or --reg_data_dir with N_class folders)")
    state = process_state(trainer.opts.training.ddp_timeout)
    written = 0
    if state.is_main_process:
        m = trainer.opts.model
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = DTYPES.get(m.mixed_precision, torch.float32) if device.type == "cuda" else torch.float32
        sampler = trainer.opts.sampling.sample_sampler or trainer.family.default_sampler
        written = generate(m.pretrained_model_name_or_path, jobs, sampler=sampler, vae=m.vae,
                           v_parameterization=m.v_parameterization, device=device, dtype=dtype)
        logger.info("--generate_class_images: %d class images written (%s)", written,
                    ", ".join(str(j.folder) for j in jobs))
    state.wait_for_everyone()
    return written
