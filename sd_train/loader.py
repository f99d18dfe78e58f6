"""The training batches of each epoch: whole bucket batches in the dataset's epoch order, split across
processes, from any position (resume), with optional persistent DataLoader workers."""

from __future__ import annotations

import os

import torch

from sd_train.interrupt import ignore_in_worker


class _Positions(torch.utils.data.Sampler):
    """Batch indices of the current pass; replaced before each epoch so one DataLoader (and its
    persistent workers) serves every epoch."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochLoader:
    """Builds the loader of one epoch for this process.

    Args:
        dataset: ``BucketBatchDataset`` (its epoch and step live in shared memory, so persistent
            workers see each new epoch).
        num_processes: Number of processes the batches are split across.
        process_index: This process's rank.
        workers: ``--max_data_loader_n_workers`` (capped at the CPU count, as kohya does).
        persistent: ``--persistent_data_loader_workers``: keep the workers alive between epochs.
    """

    def __init__(self, dataset, num_processes: int, process_index: int, workers: int, persistent: bool):
        self.dataset, self.num_processes, self.process_index = dataset, num_processes, process_index
        self.workers = min(workers or 0, os.cpu_count() or 1)  # kohya-compat: capped at the CPU count
        self.persistent = persistent and self.workers > 0
        self._positions = _Positions()
        self._shared = None

    def indices(self, start: int = 0) -> list[int]:
        """This process's batch indices of an epoch from ``start`` (padded so ranks stay equal)."""
        n, p = len(self.dataset), self.num_processes
        order = [i % n for i in range(-(-n // p) * p)]
        return order[self.process_index::p][start:]

    def epoch(self, epoch: int, start: int, global_step: int):
        """Loader of ``epoch`` (from 0) from batch ``start``. Its private generator keeps the global
        torch RNG untouched (sd-train: needed for bit-exact resume); batch contents depend only on
        (dataset seed, epoch, index), never on worker seeds."""
        self.dataset.set_epoch(epoch + 1)
        self.dataset.set_current_step(global_step)
        if not self.persistent:
            return torch.utils.data.DataLoader(self.dataset, batch_size=None, sampler=self.indices(start),
                                               num_workers=self.workers, worker_init_fn=ignore_in_worker,
                                               generator=torch.Generator().manual_seed(epoch))
        self._positions.indices = self.indices(start)
        if self._shared is None:
            self._shared = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, sampler=self._positions, num_workers=self.workers,
                persistent_workers=True, worker_init_fn=ignore_in_worker, generator=torch.Generator().manual_seed(0))
        return self._shared
