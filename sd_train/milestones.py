"""What happens after an optimizer step, at the end of an epoch and at the end of the run (CLI.md §8, §11).

The order never loses finished work: the LoRA (and its state folder) is written first, then samples are
rendered, then validation runs. sd-train: kohya samples the last epoch before it writes the final LoRA, so a
sampler crash there leaves no LoRA at all. A sampling error is one warning line and training goes on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from library.errors import first_line
from sd_train import checkpointing, disk, ema, metadata

logger = logging.getLogger(__name__)


def after_step(trainer) -> None:
    """After optimizer step ``global_step``: the final save when the run is done, else the step save; then
    step sampling and step validation."""
    step, s = trainer.progress.global_step, trainer.opts.saving
    if step >= trainer.max_train_steps:
        finish(trainer)
    elif s.save_every_n_steps and step % s.save_every_n_steps == 0:
        save_model(trainer, "step")
        if s.save_state:
            trainer.save_state("step")
    sample(trainer, None)
    trainer.narrator.validation("step", step, trainer.validator.after_step(step))


def end_epoch(trainer, epoch_no: int) -> None:
    """End of epoch ``epoch_no`` (from 1): epoch average, validation, the epoch save (not the last epoch's: the
    final save covers it), then sampling."""
    p, s = trainer.progress, trainer.opts.saving
    trainer.accelerator.log({"loss/epoch_average": trainer.losses.average}, step=epoch_no)
    trainer.narrator.epoch_end(epoch_no, trainer.losses.average, trainer.validator.after_epoch(epoch_no))
    p.epoch, p.batch_index = p.epoch + 1, 0
    if p.global_step >= trainer.max_train_steps:
        finish(trainer)
    elif s.save_every_n_epochs and epoch_no % s.save_every_n_epochs == 0 and epoch_no < trainer.num_epochs:
        save_model(trainer, "epoch", epoch=epoch_no)
        if s.save_state:
            trainer.save_state("epoch", epoch=epoch_no)
    sample(trainer, epoch_no)


def finish(trainer) -> None:
    """Write the final LoRA (and ``--save_state`` / ``--save_state_on_train_end`` folder) once."""
    if trainer.final_saved:
        return
    s = trainer.opts.saving
    save_model(trainer, "final", epoch=trainer.num_epochs)
    if s.save_state or s.save_state_on_train_end:
        trainer.save_state("final")
    trainer.final_saved = True


def sample(trainer, epoch: int | None) -> None:
    """Render the sample prompts when due; an error becomes one warning line and the run goes on."""
    try:
        trainer.narrator.sample(trainer, epoch)  # sampling.maybe_sample, timed and narrated
    except Exception as exc:  # noqa: BLE001 - any sampler failure must not end a run whose files are written
        where = f"epoch {epoch}" if epoch is not None else f"step {trainer.progress.global_step}"
        logger.warning("sampling at %s failed (%s: %s); no samples this time, training goes on",
                       where, type(exc).__name__, first_line(exc))


def prune(trainer, kind: str, new_path: Path, index: int, state: bool) -> None:
    """Remove the step/epoch file or state folder that --save_last_n_* rules out (CLI.md §8)."""
    s, unit = trainer.opts.saving, "steps" if kind == "step" else "epochs"
    every, keep = getattr(s, f"save_every_n_{unit}"), getattr(s, f"save_last_n_{unit}")
    keep = (getattr(s, f"save_last_n_{unit}_state") if state else None) or keep
    trainer.narrator.removed(checkpointing.prune_after_save(s.output_dir, new_path, kind, s.output_name, index, every,
                                                            keep, ext=None if state else s.save_model_as))


def model_path(trainer, kind: str, index: int | None) -> Path:
    """Where a ``kind`` save (``step``, ``epoch``, ``final``, ``interrupted``) of ``index`` goes."""
    s = trainer.opts.saving
    return Path(s.output_dir) / checkpointing.model_file_name(kind, s.output_name, s.save_model_as, index)


def save_model(trainer, kind: str, epoch: int | None = None) -> Path | None:
    """Write a LoRA through the host (finite check + atomic rename), then prune older ones.

    Returns:
        The path written (on the fallback folder when the output folder failed), or ``None`` when an
        intermediate save could not be written (reported; the run goes on).
    """
    trainer.accelerator.wait_for_everyone()
    step = trainer.progress.global_step
    index = step if kind == "step" else epoch
    path = model_path(trainer, kind, index)
    if not trainer.accelerator.is_main_process:
        return path
    meta = metadata.update_for_save(trainer.metadata, step, epoch or trainer.progress.epoch + 1)
    size, started = disk.lora_bytes(trainer.host.network, trainer.save_dtype), time.perf_counter()
    written = disk.write_guarded(trainer, path, lambda target: ema.save_model(trainer, target, meta), size,
                                 final=kind in disk.FINAL_KINDS)  # the trained weights, or the EMA ones (--ema)
    trainer.narrator.saved(trainer, written, time.perf_counter() - started, report=kind in ("step", "epoch"))
    if written == path and kind in ("step", "epoch"):
        prune(trainer, kind, path, index, state=False)
    return written
