"""Experiment trackers of a run: ``--log_with``, ``--logging_dir`` and the W&B flags (CLI.md §5.10, §10).

TensorBoard is accelerate's own tracker. W&B is accelerate's ``WandBTracker`` with kohya's habits: the
project is ``--log_tracker_name``, the run name ``--wandb_run_name``, every row carries ``global_step``
and ``epoch`` (hidden metrics) instead of W&B's own step, and sample images go in as ``sample_{i}``
(TRAINING.md §13). Whether the W&B package is there is checked at setup, before any model loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from accelerate.tracking import WandBTracker

from library.errors import UserError

DEFAULT_TRACKER_NAME = "network_train"  # kohya-compat: train_network.py's project name
WANDB_MISSING = "--log_with wandb needs the wandb package: pip install wandb"
SECRET_KEYS = ("wandb_api_key", "huggingface_token")
PATH_KEYS = ("pretrained_model_name_or_path", "vae", "tokenizer_cache_dir", "train_data_dir",  # kohya-compat
             "conditioning_data_dir", "reg_data_dir", "output_dir", "logging_dir")
EPOCH_SCALARS = frozenset({"loss/epoch_average", "loss/validation/epoch_average",
                           "loss/validation/epoch_divergence"})  # logged with the epoch as their step


class KohyaWandbTracker(WandBTracker):
    """accelerate's W&B tracker logging rows the way kohya does.

    Each ``log`` call is one committed W&B row with ``global_step`` and ``epoch`` added, without W&B's
    own step: W&B drops rows whose step goes backwards, which kohya's epoch scalars (logged at
    step = epoch) would do. A given ``step`` becomes ``global_step``, or ``epoch`` for the scalars in
    :data:`EPOCH_SCALARS`; the other value is the run's position now (epoch counted from 1).

    Args:
        project: W&B project (``--log_tracker_name``).
        progress: callable returning the run's :class:`sd_train.resume.Progress` now.
        **init_kwargs: passed to ``wandb.init`` (``name``, ``dir``, ``settings``, …).
    """

    def __init__(self, project: str, progress: Callable[[], Any], **init_kwargs: Any):
        super().__init__(project, **init_kwargs)
        self.progress = progress

    def start(self) -> None:
        """Create the run folder, start the W&B run and hide kohya's bookkeeping metrics."""
        if self.init_kwargs.get("dir"):
            Path(self.init_kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        super().start()
        for name in ("global_step", "epoch"):
            self.run.define_metric(name, hidden=True)  # kohya-compat

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Log one row of ``values`` at ``step`` (see the class docstring)."""
        now = self.progress()
        global_step, epoch = now.global_step, now.epoch + 1
        if step is not None and not EPOCH_SCALARS.isdisjoint(values):
            epoch = step
        elif step is not None:
            global_step = step
        self.log_row(values, global_step, epoch, **kwargs)

    def log_row(self, values: dict, global_step: int, epoch: int, **kwargs: Any) -> None:
        """Commit one W&B row of ``values`` with kohya's ``global_step`` and ``epoch`` keys."""
        self.run.log({**values, "global_step": global_step, "epoch": epoch}, **kwargs)


def tracker_kinds(log_with: str | None, logging_dir: str | None) -> list[str]:
    """Trackers of ``--log_with`` (none: TensorBoard when ``--logging_dir`` is set).

    sd-train: ``all`` means TensorBoard and W&B, not every tracker package accelerate finds installed.
    """
    if log_with is None:
        return ["tensorboard"] if logging_dir else []
    return ["tensorboard", "wandb"] if log_with == "all" else [log_with]  # sd-train: "all" is these two


def load_tracker_config(path: str | None) -> dict[str, dict]:
    """``--log_tracker_config``: a TOML file with one table of init arguments per tracker name."""
    if not path:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found (--log_tracker_config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML (--log_tracker_config): {exc}") from None
    for key, value in doc.items():
        if not isinstance(value, dict):
            raise UserError(f"{path}: '{key}' must be a table of init arguments, e.g. [wandb] (--log_tracker_config)")
    return doc


def _require_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError(WANDB_MISSING) from None
    return wandb


def wandb_init_kwargs(logging, run_dir: str | None, table: dict) -> dict[str, Any]:
    """``wandb.init`` arguments: the TOML ``[wandb]`` table, the run name, the run folder and the key.

    sd-train: kohya replaces everything with the TOML file when one is given (dropping
    ``--wandb_run_name``); here the TOML wins only for what it sets. The API key goes into the run's
    ``settings`` for this session only; kohya's ``wandb.login`` also writes it to ``~/.netrc``.

    Args:
        logging: :class:`sd_train.options.logging.LoggingOptions`.
        run_dir: ``{logging_dir}/{log_prefix}{time}`` or ``None``.
        table: the ``[wandb]`` table of ``--log_tracker_config`` (may be empty).
    """
    kwargs = dict(table)
    if logging.wandb_run_name:
        kwargs.setdefault("name", logging.wandb_run_name)  # sd-train: kohya drops it when a TOML is given
    if run_dir:
        kwargs.setdefault("dir", run_dir)  # kohya-compat: kohya sets WANDB_DIR to the run folder
    if logging.wandb_api_key:
        kwargs["settings"] = {**dict(kwargs.get("settings") or {}),  # sd-train: not written to ~/.netrc
                              "api_key": logging.wandb_api_key}
    return kwargs


def build_trackers(logging, run_dir: str | None, progress: Callable[[], Any]) -> list | None:
    """The ``log_with`` list for ``Accelerator``; raises :class:`UserError` for what cannot work.

    Args:
        logging: :class:`sd_train.options.logging.LoggingOptions`.
        run_dir: ``{logging_dir}/{log_prefix}{time}`` or ``None``.
        progress: callable returning the run's :class:`sd_train.resume.Progress` (for W&B rows).

    Returns:
        ``["tensorboard", KohyaWandbTracker(...)]`` or a part of it; ``None`` without trackers.
    """
    kinds = tracker_kinds(logging.log_with, logging.logging_dir)
    if "tensorboard" in kinds and not logging.logging_dir:
        raise UserError(f"--log_with {logging.log_with} needs --logging_dir (TensorBoard writes its files there)")
    tables = load_tracker_config(logging.log_tracker_config)
    trackers: list = [kind for kind in kinds if kind != "wandb"]
    if "wandb" in kinds:
        _require_wandb()
        kwargs = wandb_init_kwargs(logging, run_dir, tables.get("wandb", {}))
        trackers.append(KohyaWandbTracker(logging.log_tracker_name or DEFAULT_TRACKER_NAME, progress, **kwargs))
    return trackers or None


def sanitized_config(options) -> dict[str, Any]:
    """``--log_config``: every option without secrets, kohya's path options and absolute paths.

    Values are ``None``, bool, int, float or str (lists become their ``str``), as trackers accept.
    """
    config: dict[str, Any] = {}
    for key, value in options.flat().items():
        items = value if isinstance(value, (list, tuple)) else [value]
        absolute = any(isinstance(v, str) and os.path.isabs(v) for v in items)  # sd-train: kohya keeps these
        if key in SECRET_KEYS or key in PATH_KEYS or absolute:
            continue
        config[key] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return config


def init_trackers(accelerator, options) -> None:
    """Start the trackers of the run (main process), with ``--log_tracker_config`` and ``--log_config``."""
    logging = options.logging
    tables = {k: v for k, v in load_tracker_config(logging.log_tracker_config).items() if k != "wandb"}
    accelerator.init_trackers(logging.log_tracker_name or DEFAULT_TRACKER_NAME,
                              config=sanitized_config(options) if logging.log_config else None,
                              init_kwargs=tables)


def log_samples(accelerator, samples: list[tuple[int, Any, str]], step: int, epoch: int | None) -> None:
    """Log sample images to W&B when it is active, in one row: ``sample_{i}`` with the prompt as caption.

    Args:
        accelerator: the run's ``Accelerator``.
        samples: ``(prompt index, PIL image, prompt)`` triples.
        step: the optimizer step the images were made at.
        epoch: the epoch (from 1) for end-of-epoch samples, else ``None`` (the current epoch).
    """
    tracker = next((t for t in accelerator.trackers if isinstance(t, KohyaWandbTracker)), None)
    if not samples or tracker is None:
        return
    import wandb

    images = {f"sample_{i}": wandb.Image(image, caption=prompt) for i, image, prompt in samples}  # kohya-compat
    tracker.log_row(images, step, epoch if epoch is not None else tracker.progress().epoch + 1)
