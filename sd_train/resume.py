"""State folders without pickled code (CLI.md §9, TRAINING.md §11): save, load, ``--initial_step``.

sd-train: accelerate's ``save_state`` / ``load_state`` pickle and unpickle ``random_states_*.pkl``
(arbitrary code on load). sd-train writes the same files kohya reads (``model.safetensors``,
``optimizer.bin``, ``scheduler.bin``, ``scaler.pt``) but loads them with safetensors or
``torch.load(weights_only=True)``, never reads ``random_states_*.pkl`` and restores RNG states only
from its own tensor-only resume record.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from accelerate.utils import gather_object

from library.errors import UserError, first_line
from sd_train import checkpointing, disk, ema, milestones, resume_policy
from sd_train import noise as noise_lib

RESUME_RECORD = "sd_train_resume.pt"
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")  # accelerate's names for the first model
FINGERPRINT_KEYS = ("train_batch_size", "gradient_accumulation_steps", "dataset_config", "train_data_dir",
                    "reg_data_dir", "in_json", "resolution", "optimizer_type", "learning_rate", "loss_type",
                    "noise_offset", "multires_noise_iterations", "ip_noise_gamma", "min_snr_gamma")


@dataclass
class Progress:
    """Where the run is (TRAINING.md §11): optimizer steps, epoch (from 0), next micro-batch index."""
    global_step: int = 0
    epoch: int = 0
    batch_index: int = 0


def record_name(process_index: int) -> str:
    """Resume record of one process: ``sd_train_resume.pt`` (rank 0), ``sd_train_resume_{i}.pt`` (others)."""
    return RESUME_RECORD if process_index == 0 else RESUME_RECORD.replace(".pt", f"_{process_index}.pt")


def _record(trainer) -> dict:
    """This process's resume record: progress, loss slots, NaN guard, noise generators, global RNGs."""
    return {"progress": vars(trainer.progress).copy(), "loss_slots": list(trainer.losses.slots),
            "guard": trainer.guard.state_dict(), "noise_gen": trainer.gen.get_state(),
            "noise_rng": trainer.rng.getstate(), "global_rng": noise_lib.rng_snapshot()}


def policy_values(trainer) -> dict:
    """The options the resume policy compares (:mod:`sd_train.resume_policy`), for ``train_state.json``."""
    return resume_policy.policy_values(trainer.opts, seed=trainer.seed, max_train_steps=trainer.max_train_steps,
                                       prepared=trainer.prepared)


def fingerprint(trainer) -> str:
    """Hash of the options that change the data order or the math (CLI.md §9)."""
    ns = trainer.opts.namespace()
    return checkpointing.options_fingerprint({"seed": trainer.seed, **{k: getattr(ns, k) for k in FINGERPRINT_KEYS}})


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with a one-line UserError for files that need pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise UserError(f"{path}: cannot be loaded without unpickling code ({first_line(exc)}); "
                        "sd-train loads only tensor data from state folders") from exc


def write_accelerate_files(acc, network, optimizer, lr_scheduler, folder: Path) -> None:
    """Write accelerate's state files (no ``random_states_*.pkl``) so kohya's ``load_state`` reads them."""
    weights = acc.get_state_dict(network, unwrap=False)
    save_safetensors({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                     str(folder / MODEL_FILES[0]), metadata={"format": "pt"})
    torch.save(optimizer.state_dict(), folder / "optimizer.bin")
    torch.save(lr_scheduler.state_dict(), folder / "scheduler.bin")
    if acc.scaler is not None:
        torch.save(acc.scaler.state_dict(), folder / "scaler.pt")


def load_accelerate_files(acc, network, optimizer, lr_scheduler, folder: Path, new_schedule: bool = False) -> None:
    """Load network, optimizer, scheduler (and scaler) from a kohya or sd-train state folder, safely.

    With ``new_schedule`` (learning rates, scheduler or run length changed, see :mod:`sd_train.resume_policy`)
    the scheduler keeps this run's rates and curve and takes only its position from the folder.
    """
    model_path = next((folder / n for n in MODEL_FILES if (folder / n).is_file()), None)
    if model_path is None:
        raise UserError(f"--resume {folder}: no model.safetensors; not a state folder of a LoRA run")
    weights = load_safetensors(str(model_path)) if model_path.suffix == ".safetensors" else _safe_load(model_path)
    weights = {k.removeprefix("module."): v for k, v in weights.items()}  # DDP-wrapped saves (P > 1)
    try:
        acc.unwrap_model(network).load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"--resume {model_path}: its weights do not fit this network ({first_line(exc)}); "
                        "use the same --network_module/--network_dim/--network_args as the saved run") from exc
    for name in ("optimizer.bin", "scheduler.bin"):
        if not (folder / name).is_file():
            raise UserError(f"--resume {folder}: {name} is missing; the state folder is incomplete")
    initial_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(_safe_load(folder / "optimizer.bin"))
    lr_scheduler.load_state_dict(_safe_load(folder / "scheduler.bin"))
    if new_schedule:
        _rebase_schedule(optimizer, lr_scheduler, initial_lrs)
    if acc.scaler is not None and (folder / "scaler.pt").is_file():
        acc.scaler.load_state_dict(_safe_load(folder / "scaler.pt"))


def _rebase_schedule(optimizer, lr_scheduler, initial_lrs: list) -> None:
    """Put this run's initial rates back after loading a state, and set each group's rate to this run's curve
    at the saved position (LambdaLR schedulers; others keep the loaded rates)."""
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
    for group, lr in zip(optimizer.param_groups, initial_lrs):
        group["initial_lr"] = lr
    if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
        return
    inner.base_lrs = list(initial_lrs)
    lrs = [base * fn(inner.last_epoch) for base, fn in zip(inner.base_lrs, inner.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    inner._last_lr = list(lrs)


def save_state(trainer, kind: str, epoch: int | None = None) -> Path | None:
    """Write a state folder atomically (main process only): state files + train_state.json + record.

    Returns:
        The folder (on ``--fallback_output_dir`` when the output folder failed), or ``None`` when an intermediate
        state could not be written (reported; see :func:`sd_train.disk.write_guarded`).
    """
    trainer._flush_losses()
    s, p = trainer.opts.saving, trainer.progress
    index = p.global_step if kind == "step" else epoch
    final = Path(s.output_dir) / checkpointing.state_dir_name(kind, s.output_name, index)
    acc = trainer.accelerator
    acc.wait_for_everyone()
    records = gather_object([_record(trainer)]) if acc.num_processes > 1 else [_record(trainer)]
    if not acc.is_main_process:  # only rank 0 writes; the other ranks' records travel to it
        return final

    def write(folder: Path) -> None:
        with checkpointing.atomic_state_dir(folder) as tmp:
            write_accelerate_files(acc, trainer.network, trainer.optimizer, trainer.lr_scheduler, tmp)
            ema.save_state(trainer, tmp)
            if getattr(trainer, "pivot", None):  # pivotal tuning: the new tokens' rows
                trainer.pivot.save_state(tmp)
            for rank, record in enumerate(records):
                torch.save(record, tmp / record_name(rank))
            checkpointing.write_train_state(tmp, p.epoch + 1, p.global_step, {
                "global_step": p.global_step, "epoch_index": p.epoch, "batch_index_in_epoch": p.batch_index,
                "micro_step_in_accumulation": 0, "dataset_seed": trainer.dataset_seed,
                "max_train_steps": trainer.max_train_steps, "num_train_epochs": trainer.num_epochs,
                "options_fingerprint": fingerprint(trainer), "options": policy_values(trainer)})

    written = disk.write_guarded(trainer, final, write, disk.state_bytes(trainer), final=kind in disk.FINAL_KINDS,
                                 what="state")
    if written == final and kind in ("step", "epoch"):
        milestones.prune(trainer, kind, final, index, state=True)
    return written


def load_state(trainer, folder: str) -> None:
    """Resume from a state folder: bit-exact with an sd-train record, else kohya-style (CLI.md §9).

    States that store their options were checked by the resume policy before the models loaded
    (``trainer.schedule_changes``); older sd-train states must match the options fingerprint.
    """
    info, t = checkpointing.read_train_state(folder), trainer.opts.training
    record, path = info.get("sd_train"), Path(folder) / record_name(trainer.accelerator.process_index)
    forced = t.initial_step is not None or t.initial_epoch is not None
    old_style = record and "options" not in record
    if old_style and record["options_fingerprint"] != fingerprint(trainer) and not forced:
        raise UserError(f"--resume {folder}: the state was written with different options (batch size, "
                        "dataset, accumulation, seed, ...); pass --initial_step to resume anyway")
    load_accelerate_files(trainer.accelerator, trainer.network, trainer.optimizer, trainer.lr_scheduler,
                          Path(folder), new_schedule=bool(getattr(trainer, "schedule_changes", None)))
    if getattr(trainer, "pivot", None):
        trainer.pivot.load_state(Path(folder))
    if record and not path.is_file():  # saved with fewer processes: this rank starts from rank 0's RNGs
        path = Path(folder) / RESUME_RECORD
    if not record or not path.is_file():  # kohya state: restart at the epoch boundary
        trainer.progress = Progress(info["current_step"], info["current_step"] // trainer.steps_per_epoch)
        trainer.accelerator.print(f"resumed kohya state {folder} at step {info['current_step']}, epoch "
                                  f"{trainer.progress.epoch + 1}; resume is not bit-exact")
        return
    saved = _safe_load(path)
    trainer.progress, trainer.losses.slots = Progress(**saved["progress"]), list(saved["loss_slots"])
    trainer.guard.load_state_dict(saved["guard"])
    trainer.gen.set_state(saved["noise_gen"])
    trainer.rng.setstate(saved["noise_rng"])
    noise_lib.rng_restore(saved["global_rng"])
    p = trainer.progress
    exact = "not bit-exact (options changed)" if getattr(trainer, "schedule_changes", None) else "bit-exact"
    trainer.accelerator.print(f"resumed {folder}: continuing at step {p.global_step}/{trainer.max_train_steps}, "
                              f"epoch {p.epoch + 1}/{trainer.num_epochs}, batch {p.batch_index} of the epoch ({exact})")


def initial_progress(initial_step: int | None, initial_epoch: int | None, skip: bool, steps_per_epoch: int,
                     max_train_steps: int, accum: int) -> Progress | None:
    """Where ``--initial_step`` / ``--initial_epoch`` start the run (CLI.md §9); ``None`` when neither is set.

    Args:
        initial_step: ``--initial_step`` (wins over ``initial_epoch``).
        initial_epoch: ``--initial_epoch`` (1 = first): ``initial_step = (initial_epoch − 1) × steps_per_epoch``.
        skip: ``--skip_until_initial_step``: start inside the epoch at the batch an uninterrupted run
            would reach (the data order then matches it); otherwise at the start of that epoch.
        steps_per_epoch: Optimizer steps per epoch (CLI.md §7).
        max_train_steps: Resolved run length; the initial step must be below it.
        accum: ``--gradient_accumulation_steps`` (micro-batches per step).

    Raises:
        UserError: a negative start, or one not below ``max_train_steps``.
    """
    if initial_step is None and initial_epoch is None:
        return None
    step = initial_step if initial_step is not None else (initial_epoch - 1) * steps_per_epoch
    if step < 0:
        raise UserError(f"--initial_step/--initial_epoch give step {step}; it must be ≥ 0 (--initial_epoch ≥ 1)")
    if step >= max_train_steps:
        raise UserError(f"--initial_step/--initial_epoch give step {step}, not below max_train_steps "
                        f"{max_train_steps}; raise --max_train_steps or lower the initial step")
    epoch, in_epoch = divmod(step, steps_per_epoch)
    # sd-train: the data stream is a pure function of (seed, epoch, position), so jumping to the position
    # yields exactly the batches that drawing and discarding would reach, without loading them.
    return Progress(global_step=step, epoch=epoch, batch_index=in_epoch * accum if skip else 0)
