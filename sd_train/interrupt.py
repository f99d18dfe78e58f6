"""Ctrl-C (SIGINT) and SIGTERM during training: stop after the current optimizer step and save.

sd-train: kohya dies with a traceback and keeps only what its cadence saved. Here the first signal asks the
loop to stop once the optimizer step in progress is done; the run then writes
``{output_name}-interrupted.safetensors`` and a resumable ``{output_name}-interrupted-state`` folder (unless
``--no_save_on_interrupt``), prints where they are and the exact ``--resume`` command, and exits 130. A second
signal of the same kind exits at once (``KeyboardInterrupt``; temporary files are removed, nothing written
before is touched). DataLoader workers ignore both signals, so the batches of the step in progress still come.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading

import torch


EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a Ctrl-C
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_DROPPED = ("--resume", "--initial_step", "--initial_epoch")  # flags with a value the resume command replaces


def ignore_in_worker(_worker_id: int) -> None:
    """``worker_init_fn`` of DataLoader workers: leave SIGINT/SIGTERM to the training process."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopRequest:
    """Context manager that turns the first SIGINT/SIGTERM into a request the training loop polls.

    Handlers are installed only in the main thread (Python allows no other); elsewhere signals keep their
    default behaviour.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum == signum:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            sys.stderr.write(f"\n{name}: stopping after the current step to save a resumable state "
                             f"(send {name} again to quit at once without saving)\n")
            sys.stderr.flush()

    def requested(self, accelerator) -> bool:
        """True when any process was asked to stop (one small all-reduce per step with several processes)."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def resume_command(script: str, argv: list[str], state_dir: str) -> str:
    """The command line that resumes from ``state_dir``: the run's own arguments with ``--resume state_dir``
    (a previous ``--resume`` / ``--initial_step`` / ``--initial_epoch`` / ``--skip_until_initial_step`` dropped)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in _DROPPED:
            skip = "=" not in arg
            continue
        if name == "--skip_until_initial_step":
            continue
        args.append(arg)
    return shlex.join([script, *args, "--resume", state_dir])


def save_interrupted(trainer) -> int:
    """Write the interrupted-run LoRA and state folder, print where they are and how to resume; returns 130."""
    p, acc = trainer.progress, trainer.accelerator
    where = f"step {p.global_step}/{trainer.max_train_steps} (epoch {p.epoch + 1}/{trainer.num_epochs})"
    if trainer.final_saved:
        acc.print(f"interrupted at {where}, after the final LoRA was written ({trainer.last_saved})")
        return EXIT_INTERRUPTED
    if trainer.opts.saving.no_save_on_interrupt:
        acc.print(f"interrupted at {where}; nothing saved (--no_save_on_interrupt)")
        return EXIT_INTERRUPTED
    from sd_train import milestones

    lora = milestones.save_model(trainer, "interrupted", epoch=p.epoch + 1)
    state = trainer.save_state("interrupted")
    acc.print(f"interrupted at {where}: wrote {lora} and the state folder {state}")
    acc.print(f"resume with: {resume_command(trainer.family.script(), trainer.argv, str(state))}")
    return EXIT_INTERRUPTED
