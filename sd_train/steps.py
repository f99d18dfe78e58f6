"""Step and epoch arithmetic of CLI.md §7 (pure integers)."""

from __future__ import annotations

import math


def compute_steps(batches: int, num_processes: int, grad_accum: int, max_train_steps: int,
                  max_train_epochs: int | None) -> tuple[int, int, int]:
    """Resolve the run length from the DataLoader size.

    Args:
        batches: Length of the training DataLoader before ``accelerate.prepare`` (all processes).
        num_processes: Number of processes ``P``.
        grad_accum: ``--gradient_accumulation_steps`` ``A``.
        max_train_steps: ``--max_train_steps`` (used when ``max_train_epochs`` is ``None``).
        max_train_epochs: ``--max_train_epochs`` or ``None``.

    Returns:
        ``(max_train_steps, steps_per_epoch, num_train_epochs)`` in optimizer steps / epochs.
        ``max_train_steps = E × ceil(batches / P / A)`` with epochs;
        ``steps_per_epoch = ceil(ceil(batches / P) / A)``;
        ``num_train_epochs = ceil(max_train_steps / steps_per_epoch)``.
    """
    if batches <= 0:
        raise ValueError("the training DataLoader is empty")
    if max_train_epochs is not None:
        max_train_steps = max_train_epochs * math.ceil(batches / num_processes / grad_accum)
    batches_per_process = math.ceil(batches / num_processes)
    steps_per_epoch = math.ceil(batches_per_process / grad_accum)
    num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    return max_train_steps, steps_per_epoch, num_train_epochs


def effective_save_every_n_epochs(saving, num_epochs: int) -> int | None:
    """``--save_every_n_epochs``, or ``max(1, epochs // ratio)`` under ``--save_n_epoch_ratio`` (kohya: it wins).

    Args:
        saving: the run's :class:`sd_train.options.saving.SavingOptions`.
        num_epochs: epochs of the run.
    """
    ratio = saving.save_n_epoch_ratio
    return max(1, num_epochs // ratio) if ratio and ratio > 0 else saving.save_every_n_epochs
