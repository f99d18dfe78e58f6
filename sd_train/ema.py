"""EMA of the network weights (``--ema``): a shadow copy of the plugin's trainable parameters.

After every ``--ema_update_every``-th optimizer step ``s`` the shadow becomes ``d·shadow + (1 − d)·weights``
with ``d = --ema_decay`` (with ``--ema_warmup``: ``min(decay, (1 + t) / (10 + t))``, ``t = s − 1``, the ramp of
OneTrainer and of diffusers' ``EMAModel``). It starts from the weights at step 0 (after ``--network_weights``),
lives in float32 on the parameters' device (``--ema_on_cpu``: in RAM), is saved through the plugin's own
``save_weights`` by swapping it into the parameters (so any plugin works, LyCORIS included) and travels
in state folders as ``ema.safetensors``, so resume stays bit-exact. See docs/DECISIONS.md ("EMA").
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from library.errors import UserError
from sd_train.checkpointing import ema_path

STATE_FILE = "ema.safetensors"
logger = logging.getLogger(__name__)


def named_trainable(host) -> list[tuple[str, torch.nn.Parameter]]:
    """The plugin's trainable parameters with their names in the network; kohya-format plugins name
    text-encoder modules ``lora_te*``. Parameters outside the network (pivotal tuning's embedding rows,
    saved beside it) are left out; a network that is not a ``torch.nn.Module`` gets ``param.{i}`` names."""
    params = host.get_trainable_params()
    if not isinstance(host.network, torch.nn.Module):
        return [(f"param.{i}", p) for i, p in enumerate(params)]
    names = {id(p): n for n, p in host.network.named_parameters()}
    return [(names[id(p)], p) for p in params if id(p) in names]


class NetworkEma:
    """The shadow weights of ``params`` (see the module docstring for the recurrence)."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], decay: float, every: int, warmup: bool,
                 on_cpu: bool):
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.decay, self.every, self.warmup = decay, every, warmup
        self.shadow = [p.detach().to("cpu" if on_cpu else p.device, torch.float32, copy=True) for p in self.params]

    def decay_at(self, step: int) -> float:
        """Decay of the update after optimizer step ``step`` (counted from 1)."""
        return min(self.decay, step / (9 + step)) if self.warmup else self.decay  # (1 + t) / (10 + t), t = step - 1

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in after optimizer step ``step`` when it is an update step."""
        if step % self.every:
            return
        d = self.decay_at(step)
        for shadow, param in zip(self.shadow, self.params):
            shadow.mul_(d).add_(param.detach().to(shadow.device, torch.float32), alpha=1.0 - d)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights in the network's parameters for the duration; the trained ones back after, bitwise."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow):
                param.copy_(shadow)
            try:
                yield
            finally:
                for param, value in zip(self.params, trained):
                    param.copy_(value)

    def save(self, path: Path) -> None:
        """Write the shadow weights by name (a state folder's ``ema.safetensors``)."""
        save_file({n: s.detach().cpu().contiguous() for n, s in zip(self.names, self.shadow)}, str(path),
                  metadata={"format": "pt"})

    def load(self, path: Path) -> None:
        """Read the shadow weights of a state folder; UserError when they do not fit this network."""
        saved = load_file(str(path))
        if set(saved) != set(self.names) or any(saved[n].shape != s.shape for n, s in zip(self.names, self.shadow)):
            raise UserError(f"--resume {path}: the EMA weights do not fit this network; use the same "
                            "--network_module/--network_dim/--network_args as the saved run")
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(saved[name])


def create(trainer) -> NetworkEma | None:
    """The run's EMA (``None`` without ``--ema``), restored from the ``--resume`` folder when it has one."""
    e = trainer.opts.ema
    if not e.ema:
        return None
    ema = NetworkEma(named_trainable(trainer.host), e.ema_decay, e.ema_update_every, e.ema_warmup, e.ema_on_cpu)
    folder = trainer.opts.saving.resume
    if folder and (Path(folder) / STATE_FILE).is_file():
        ema.load(Path(folder) / STATE_FILE)
    elif folder:
        logger.warning("--resume %s has no %s: the EMA starts from the resumed weights", folder, STATE_FILE)
    return ema


def update(trainer, step: int) -> None:
    """After optimizer step ``step``: fold the weights into the run's EMA (nothing without ``--ema``)."""
    if trainer.ema is not None:
        trainer.ema.update(step)


def run_metadata(opts) -> dict[str, str]:
    """``ss_ema_*`` keys of an EMA run (none without ``--ema`` or with ``--no_metadata``)."""
    e = opts.ema
    if not e.ema or opts.saving.no_metadata:
        return {}
    return {"ss_ema_decay": str(e.ema_decay), "ss_ema_update_every": str(e.ema_update_every),
            "ss_ema_warmup": str(e.ema_warmup)}


def save_model(trainer, path: Path, meta: dict[str, str]) -> None:
    """Write a model file through the plugin: the trained weights, or with ``--ema`` the EMA weights (and with
    ``--ema_save_as both`` the trained ones at ``path`` and the EMA ones next to it as ``NAME-ema``). The run's
    workflow keys (``ss_ema_*``, ``ss_stop_text_encoder_training``) join ``meta``."""
    ema, dtype, opts = trainer.ema, trainer.save_dtype, trainer.opts
    meta = {**meta, **run_metadata(opts), **trainer.te_stop.run_metadata(opts)}
    if ema is None:
        trainer.host.save(str(path), dtype, meta)
        return
    full = not opts.saving.no_metadata
    if opts.ema.ema_save_as == "both":
        trainer.host.save(str(path), dtype, {**meta, "ss_ema_weights": "False"} if full else meta)
        path = ema_path(path)
    with ema.applied():
        trainer.host.save(str(path), dtype, {**meta, "ss_ema_weights": "True"} if full else meta)


def save_state(trainer, folder: Path) -> None:
    """Put the EMA weights into a state folder being written (nothing without ``--ema``)."""
    if trainer.ema is not None:
        trainer.ema.save(folder / STATE_FILE)


def sampling_weights(trainer):
    """Context for sampling and validation: the EMA weights with ``--ema_for_sampling``, else a no-op."""
    ema = getattr(trainer, "ema", None)
    return ema.applied() if ema is not None and trainer.opts.ema.ema_for_sampling else contextlib.nullcontext()
