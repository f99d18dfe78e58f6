"""Validation loss on the held-out split (TRAINING.md §10, CLI.md §10) that never perturbs training."""

from __future__ import annotations

import random

import torch

from library.dataset.dataset import BucketBatchDataset
from sd_train import noise as noise_lib
from sd_train.ema import sampling_weights

NUM_TIMESTEPS = 6  # linspace(min_t, max_t, 6)[1:-1]: four fixed timesteps


def fixed_timesteps(min_timestep: int | None, max_timestep: int | None) -> list[int]:
    """The validation timesteps ``linspace(min_t, max_t, 6)[1:-1]`` (200, 400, 600, 800 by default)."""
    lo, hi = min_timestep or 0, noise_lib.NUM_TRAIN_TIMESTEPS if max_timestep is None else max_timestep
    return [int(v) for v in torch.linspace(lo, hi, NUM_TIMESTEPS)[1:-1].tolist()]


class Validator:
    """Runs validation for a trainer when ``PreparedData.validation`` is non-empty.

    Args:
        trainer: the :class:`sd_train.trainer.Trainer` (uses its models, family, ``compute_loss``).
        dataset: the validation :class:`BucketBatchDataset` or ``None`` (then nothing runs).
    """

    def __init__(self, trainer, dataset: BucketBatchDataset | None):
        t = trainer.opts.training
        self.trainer, self.dataset = trainer, dataset
        self.seed = t.validation_seed if t.validation_seed is not None else trainer.seed
        self.every_steps, self.every_epochs = t.validate_every_n_steps, t.validate_every_n_epochs or 1
        self.max_batches = t.max_validation_steps
        self.timesteps = fixed_timesteps(t.min_timestep, t.max_timestep)

    def after_step(self, step: int) -> float | None:
        """Validate after optimizer step ``step`` when it is a multiple of ``--validate_every_n_steps``."""
        if self.dataset is None or not self.every_steps or step % self.every_steps:
            return None
        return self._log("step", self.run(), step)

    def after_epoch(self, epoch_no: int) -> float | None:
        """Validate at the end of epoch ``epoch_no`` (from 1) every ``--validate_every_n_epochs`` epochs."""
        if self.dataset is None or epoch_no % self.every_epochs:
            return None
        return self._log("epoch", self.run(), epoch_no)  # kohya-compat: epoch scalars use the epoch as step

    def _log(self, kind: str, value: float, step: int) -> float:
        self.trainer._flush_losses()  # loss/average up to date before the divergence
        average = self.trainer.losses.average
        self.trainer.accelerator.log({f"loss/validation/{kind}_average": value,
                                      f"loss/validation/{kind}_divergence": value - average}, step=step)
        return value

    def _indices(self) -> list[int]:
        """This process's share of the validation batches, at most ``--max_validation_steps`` in all."""
        acc, n = self.trainer.accelerator, len(self.dataset)
        n = min(n, self.max_batches) if self.max_batches else n
        return list(range(n))[acc.process_index::acc.num_processes]

    def run(self) -> float:
        """Mean validation loss over all processes' batches × the fixed timesteps.

        Global RNG states are saved, seeded with the validation seed and restored; the trainer's
        noise generators are not used; the network is in ``eval()`` with no gradients.
        """
        tr, snap = self.trainer, noise_lib.rng_snapshot()
        network, was_training = tr.host.network, tr.host.network.training
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        gen, rng = torch.Generator().manual_seed(self.seed), random.Random(self.seed)
        self.dataset.set_epoch(1)
        total, count = torch.zeros((), device=tr.accelerator.device), 0
        network.eval()
        _set_optimizer_mode(tr.optimizer, "eval")
        try:
            with torch.no_grad(), sampling_weights(tr):  # --ema_for_sampling
                for index in self._indices():
                    batch = self.dataset[index]
                    for t in self.timesteps:
                        total = total + tr.compute_loss(batch, gen, rng, timestep=t)[0].float()
                        count += 1
        finally:
            network.train(was_training)
            _set_optimizer_mode(tr.optimizer, "train")
            noise_lib.rng_restore(snap)
        sums = tr.accelerator.reduce(torch.stack([total, total.new_tensor(float(count))]), reduction="sum")
        return float(sums[0] / sums[1].clamp(min=1))


def _set_optimizer_mode(optimizer, mode: str) -> None:
    """Schedule-free optimizers have ``train()`` / ``eval()`` (TRAINING.md §10); others are left alone."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, mode) and hasattr(inner, "train") and hasattr(inner, "eval"):
        getattr(inner, mode)()
