"""What a run says while it works: the plan, one log line per event, the end summary, the run report.

The trainer calls a :class:`Narrator` at a few points (epoch start/end, optimizer step, file written,
samples, validation, skipped step, end); everything else lives here. Lines go through ``logging``
(logger ``sd_train.narration``); ``--quiet`` keeps only warnings, the plan and the summary. On the main
process the narrator also keeps ``{output_dir}/{name}_run.json`` (the run record) and rewrites
``{name}_report.html`` at each save and at the end (:mod:`library.report`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from library.errors import UserError, first_line
from library.io.safetensors_io import atomic_path
from library.report.units import duration, sized
from sd_train import eta, run_stats
from sd_train.plan import METADATA_GUESS, build_plan

logger = logging.getLogger(__name__)
ETA_AFTER_STEPS = 5  # the first step (warm-up, compilation) is left out of the median


class Narrator:
    """Narration and bookkeeping of one run (a silent no-op on processes other than the main one).

    Args:
        opts: the run's options.
        plan: its :class:`sd_train.plan.RunPlan`.
        report: the dataset report dict.
        main: this is the main process (the only one that prints and writes).
        prompts: the sample prompts (for the ETA and the report's captions).
    """

    def __init__(self, opts, plan, report: dict, main: bool = True, prompts: list | None = None):
        s = opts.saving
        self.opts, self.plan, self.report, self.main, self.prompts = opts, plan, report, main, prompts or []
        self.name = s.output_name or "last"
        self.out = Path(s.output_dir or ".")
        self.active = main and not (opts.training.dry_run or opts.dataset.debug_dataset)
        self.quiet = opts.logging.quiet
        self.record = run_stats.new_record(self.name, plan, report)
        self.clock = run_stats.Clock()
        self.epoch_started = time.perf_counter()
        self.device = None
        self.announced: set[Path] = set()

    @classmethod
    def start(cls, opts, prepared, batches: int, family) -> "Narrator":
        """Print the dataset report and the plan (main process); write the dataset report file and the
        first run record (not under ``--dry_run``)."""
        from library.dataset.report import format_report
        from sd_train.distributed import process_state
        from sd_train.sampling import load_prompts

        state = process_state(opts.training.ddp_timeout)
        prompts = load_prompts(opts.sampling.sample_prompts) if opts.sampling.sample_prompts else []
        meta_bytes = len(json.dumps(prepared.metadata_fields(), default=str)) + METADATA_GUESS
        report = prepared.report()
        plan = build_plan(opts, report, batches, state.num_processes, family, len(prompts), meta_bytes)
        narrator = cls(opts, plan, report, state.is_main_process, prompts)
        if state.is_main_process:
            print(format_report(report))
            print("\n".join(plan.lines))
        if state.is_main_process and not opts.training.dry_run:  # --debug_dataset runs write it too
            narrator.write_json(f"{narrator.name}_dataset_report.json", report, indent=2)
            narrator.record["files"].append({"path": f"{narrator.name}_dataset_report.json", "kind": "dataset report"})
        narrator.write_record()
        return narrator

    # --- lines -------------------------------------------------------------------------------
    def info(self, message: str, *args) -> None:
        """One narration line (main process, not under ``--quiet``)."""
        if self.main and not self.quiet:
            logger.info(message, *args)

    def network_ready(self, network, device=None) -> None:
        """After the network is applied: how many modules and trainable parameters it has."""
        self.device = device
        modules, params = run_stats.network_size(network)
        self.record["network"] = {"modules": modules, "params": params}
        self.info("network: %s%s trainable parameters", f"{modules} modules, " if modules else "", f"{params:,}")

    def epoch_start(self, epoch_no: int, global_step: int) -> None:
        """Epoch ``epoch_no`` (from 1) begins after ``global_step`` optimizer steps (more than 0 on resume)."""
        self.epoch_started = time.perf_counter()
        self.clock.resume()
        self.record["steps_done"] = global_step
        steps = min(self.plan.steps_per_epoch, self.plan.max_train_steps - global_step)
        self.info("epoch %d/%d: %d optimizer steps", epoch_no, self.plan.num_epochs, steps)

    def step_done(self, step: int) -> None:
        """Optimizer step ``step`` (from 1) and its cadence work are finished (the clock's median leaves the
        rare steps with a save or samples out); after :data:`ETA_AFTER_STEPS` steps, log the ETA."""
        self.record["steps_done"] = step
        self.clock.step_done(self.device, sync=step <= ETA_AFTER_STEPS)
        if step == min(ETA_AFTER_STEPS, self.plan.max_train_steps - 1) and step >= 3:
            remaining = self.remaining(step)
            self.record["eta_seconds"] = remaining.total
            finish = time.strftime("%H:%M", time.localtime(time.time() + remaining.total))
            self.info("ETA: %s (done about %s)", remaining.describe(), finish)

    def losses(self, rows: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
        """Loss rows ``(step, current, average)`` as the trainer reads them from the device; returns them."""
        self.record["loss"] = run_stats.add_losses(self.record["loss"], rows)
        return rows

    def epoch_end(self, epoch_no: int, mean_loss: float, validation_loss: float | None = None) -> None:
        """Epoch ``epoch_no`` is complete: its mean loss, its time, the time still to come, and its
        validation loss when there is one."""
        seconds = time.perf_counter() - self.epoch_started
        self.record["epochs"].append({"epoch": epoch_no, "mean_loss": mean_loss, "seconds": seconds})
        left = ""
        if self.clock.step_seconds and self.record["steps_done"] < self.plan.max_train_steps:
            left = f"; about {duration(self.remaining(self.record['steps_done']).total)} left"
        self.info("epoch %d/%d done: mean loss %.4f, %s%s", epoch_no, self.plan.num_epochs, mean_loss,
                  duration(seconds), left)
        self.validation("epoch", epoch_no, validation_loss)

    def remaining(self, step: int) -> eta.Remaining:
        """Time still to come after optimizer step ``step``."""
        return eta.remaining(self.plan, self.opts, self.prompts, self.report, self.clock, step,
                                   len([f for f in self.record["files"] if f["kind"] == "model"]))

    def wrote(self, path, kind: str = "model", seconds: float | None = None):
        """A model file or state folder was written; returns ``path``."""
        if path is None or not self.active:
            return path
        self.record["files"].append({"path": self._rel(Path(path)), "kind": kind})
        if seconds is not None:
            self.clock.save_seconds.append(seconds)
        self.info("saved %s (%s)", path, sized(path))
        return path

    def saved(self, trainer, path, seconds: float, report: bool = True) -> None:
        """A model save took ``seconds`` and wrote ``path`` (``None``: it failed and was reported); narrate it
        and, with ``report``, rewrite the run record and the report."""
        from sd_train.checkpointing import embedding_file

        if path is None:
            return
        self.wrote(path, "model", seconds)
        if embedding_file(path).is_file():  # pivotal tuning: the new tokens' embedding beside the LoRA
            self.wrote(embedding_file(path), "embedding")
        if report:
            self.checkpoint(trainer)

    def sample(self, trainer, epoch: int | None) -> list:
        """Render the samples that are due now (:func:`sd_train.sampling.maybe_sample`) and narrate them."""
        from sd_train.sampling import maybe_sample

        started = time.perf_counter()
        paths = maybe_sample(trainer, epoch)
        self.samples(paths, epoch, trainer.progress.global_step, time.perf_counter() - started)
        return paths

    def removed(self, path) -> None:
        """An older file or state folder was pruned (``--save_last_n_*``)."""
        if path:
            self.info("removed %s (older than --save_last_n_* keeps)", path)

    def samples(self, paths: list, epoch: int | None, step: int, seconds: float = 0.0) -> None:
        """Sample images were written at ``step`` (end of ``epoch`` when given)."""
        if not paths or not self.active:
            return
        prompts = self._current_prompts()
        self.clock.image_seconds.append(seconds / len(paths))
        for i, path in enumerate(paths):
            prompt = prompts[i].prompt if i < len(prompts) else ""
            self.record["samples"].append({"path": self._rel(Path(path)), "index": i, "prompt": prompt,
                                           "step": step, "epoch": epoch})
            self.info("sample written: %s", path)

    def validation(self, kind: str, index: int, value: float | None) -> None:
        """A validation loss was computed at step or epoch ``index``."""
        if value is None:
            return
        self.record["validation"].append({"kind": kind, "at": index, "loss": value})
        self.info("validation loss at %s %d: %.4f", kind, index, value)

    def nan_skip(self, step: int, report: str) -> None:
        """The NaN guard skipped optimizer step ``step`` (always shown, also under ``--quiet``)."""
        self.record["nan_skips"].append({"step": step, "batch": report})
        if self.main:
            logger.warning("skipped non-finite step %d: %s", step, report)

    # --- files -------------------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    def _current_prompts(self) -> list:
        from sd_train.sampling import load_prompts

        try:
            return load_prompts(self.opts.sampling.sample_prompts)
        except UserError:
            return self.prompts

    def write_json(self, file_name: str, value, indent: int = 1) -> None:
        """Write ``{output_dir}/{file_name}`` atomically (temporary file, then rename); a failure (a full disk)
        is a warning: bookkeeping never ends a run."""
        try:
            with atomic_path(self.out / file_name) as tmp:
                Path(tmp).write_text(json.dumps(value, indent=indent, default=str), encoding="utf-8")
        except (OSError, UserError) as err:
            logger.warning("%s not written (%s); training goes on", self.out / file_name, first_line(err))

    def _first_writes(self, *paths: Path | None) -> None:
        """Narrate the bookkeeping files (dataset report, run record, report) once, at the first save: not at
        every rewrite, and not before models load (where the one line of a bad-input error must stay alone)."""
        for path in paths:
            if path is not None and path.exists() and path not in self.announced:
                self.announced.add(path)
                self.info("wrote %s (%s)", path, sized(path))

    def write_record(self, status: str | None = None) -> None:
        """Rewrite ``{name}_run.json`` (main process, not for ``--dry_run``)."""
        if not self.active:
            return
        if status:
            self.record["status"] = status
        run_stats.refresh(self.record, self.clock)
        self.write_json(f"{self.name}_run.json", self.record)

    def checkpoint(self, trainer, status: str = "running") -> Path | None:
        """After a save (and at the end): flush the trackers, rewrite the run record and the report."""
        if not self.active:
            return None
        self.record["log_dir"] = run_stats.log_dir(trainer)
        run_stats.flush_trackers(trainer)
        self.write_record(status)
        report = run_stats.write_report(self.out, self.name)
        self._first_writes(self.out / f"{self.name}_dataset_report.json", self.out / f"{self.name}_run.json", report)
        return report

    def finish(self, trainer) -> None:
        """The run is over: final record, final report, then the end summary on stdout."""
        if not self.active:
            return
        from sd_train.summary import summary_lines

        self.checkpoint(trainer, "finished")
        print("\n".join(summary_lines(self.record, self.out, self.opts)))

    @staticmethod
    def stop(trainer) -> None:
        """The trainer's cleanup: close its narrator, when setup got as far as making one."""
        narrator = getattr(trainer, "narrator", None)
        if narrator is not None:
            narrator.close(trainer)

    def close(self, trainer) -> None:
        """Cleanup of a run that did not finish (error, interrupt): the record says so and, once the run had
        trained or written something, the report is rebuilt. Silent: the error itself is the line to read."""
        if not self.active or self.record.get("status") != "running":
            return
        self.quiet = True
        if self.record["steps_done"] or len(self.record["files"]) > 1:
            self.checkpoint(trainer, "stopped")
        else:
            self.write_record("stopped")
