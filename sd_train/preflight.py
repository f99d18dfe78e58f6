"""Checks that run before any model loads, each failing with one line that names the flag.

sd-train: kohya finds a misspelt ``--network_module``, a missing optimizer package or a bad ``--resume`` folder
only after the models have loaded (minutes for SDXL). Here, in order:

1. :func:`check_options` (before the dataset pre-pass): the network plugin imports and has ``create_network``;
   the optimizer resolves and its package is installed; the LR scheduler is known; every sampler of
   ``--sample_sampler`` and the prompt file has its dependency; the ``--resume`` folder is a state folder of
   this kind of run. Without ``--seed``, a resumed run takes the seed its state folder recorded.
2. :func:`check_planned_run` (after the pre-pass, which checks resolutions and buckets): the resume policy
   (:mod:`sd_train.resume_policy`) and the disk space (:mod:`sd_train.space`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from library.errors import UserError
from library.models.detect import lora_name_families
from library.models.schedulers import check_sampler_dependencies
from sd_train import checkpointing, optim, resume_policy, sampling, space
from sd_train.network_host import NetworkHost
from sd_train.steps import compute_steps

logger = logging.getLogger(__name__)


def check_options(options, family):
    """The name checks of step 1; returns the options (with the state's seed adopted on resume).

    Raises:
        UserError: the first check that fails (one line naming the flag).
    """
    n, o, sp, s = options.network, options.optimizer, options.sampling, options.saving
    NetworkHost.load(n.network_module or "networks.lora")
    optim.check_optimizer(o.optimizer_type)
    optim.check_scheduler(o)
    names = [sp.sample_sampler]
    if sp.sample_prompts:
        names += [p.sample_sampler for p in sampling.load_prompts(sp.sample_prompts)]
    check_sampler_dependencies(names)
    if not s.resume:
        return options
    saved = check_resume_folder(s.resume, family)
    if options.training.seed is None and saved and saved.get("seed") is not None:
        logger.info("--resume: using the seed of the saved run, %s", saved["seed"])
        options = options.replace(seed=int(saved["seed"]))
    return options


def check_resume_folder(folder: str, family) -> dict | None:
    """A ``--resume`` folder exists, holds a state and was written by a run of this script's families.

    Returns:
        The options the state recorded (``None`` for kohya states and older sd-train states).
    """
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"--resume {folder}: folder not found; pass a state folder written with --save_state "
                        "(name-state, name-step00000100-state, name-interrupted-state, ...)")
    info = checkpointing.read_train_state(path)
    model = path / "model.safetensors"
    if model.is_file():
        from library.io.safetensors_io import read_header

        found = lora_name_families(k.partition(".")[0] for k in read_header(model)[0])
        if found and not set(found) & set(family.specs):
            script = found[0].trainer_script
            raise UserError(f"--resume {folder}: this state is of a {script} run; resume it with {script}")
    elif not (path / "pytorch_model.bin").is_file():
        raise UserError(f"--resume {folder}: no model.safetensors; not a state folder of a LoRA run")
    return (info.get("sd_train") or {}).get("options")


def check_planned_run(trainer, num_processes: int, disk: bool = True) -> None:
    """Step 2: the resume policy (sets ``trainer.schedule_changes``) and, with ``disk`` (the main process), the
    disk space, before models load."""
    t, s = trainer.opts.training, trainer.opts.saving
    trainer.max_train_steps, _, trainer.num_epochs = compute_steps(
        len(trainer.dataset), num_processes, t.gradient_accumulation_steps, t.max_train_steps, t.max_train_epochs)
    trainer.schedule_changes = []
    if s.resume:
        info = checkpointing.read_train_state(s.resume)
        saved = (info.get("sd_train") or {}).get("options")
        current = resume_policy.policy_values(trainer.opts, seed=trainer.seed,
                                              max_train_steps=trainer.max_train_steps, prepared=trainer.prepared)
        forced = t.initial_step is not None or t.initial_epoch is not None
        changed = resume_policy.check(s.resume, saved, current, info["current_step"], forced)
        if changed:
            logger.warning("--resume %s: changed since the state was saved: %s; the run continues with the new "
                           "values and is no longer bit-exact with an uninterrupted run", s.resume, ", ".join(changed))
        trainer.schedule_changes = changed
    if disk:
        space.check(trainer)
