"""Declarative training options: one frozen dataclass per group, kohya flag names verbatim.

``TrainOptions`` bundles the groups. ``sd_train.cli`` generates the argparse parser, the
``--config_file`` converter and ``--output_config`` from the field metadata (see
``sd_train.options.base.opt``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

from sd_train.options.dataset import DatasetOptions
from sd_train.options.logging import LoggingOptions
from sd_train.options.model import ModelOptions
from sd_train.options.network import NetworkOptions
from sd_train.options.optimizer import OptimizerOptions
from sd_train.options.pivotal import PivotalOptions, TextualInversionOptions
from sd_train.options.sampling import SamplingOptions
from sd_train.options.saving import SavingOptions
from sd_train.options.training import TrainingOptions
from sd_train.options.workflow import EmaOptions

GROUPS: dict[str, type] = {
    "model": ModelOptions,
    "dataset": DatasetOptions,
    "training": TrainingOptions,
    "optimizer": OptimizerOptions,
    "network": NetworkOptions,
    "saving": SavingOptions,
    "logging": LoggingOptions,
    "sampling": SamplingOptions,
    "pivotal": PivotalOptions,
    "textual_inversion": TextualInversionOptions,
    "ema": EmaOptions,
}


def option_fields(entry: str | None = None) -> Iterator[tuple[str, dataclasses.Field]]:
    """Yield ``(group_name, field)`` for every option of an entry point, in flag-definition order.

    Args:
        entry: a key of ``sd_train.families.ENTRIES`` (``"sd"``: train_network.py, ``"sdxl"``,
            ``"sd_ti"``: train_textual_inversion.py, ``"sdxl_ti"``) or ``None`` (every flag).

    An entry leaves out the groups it does not take and may have its own defaults (a copied field).
    """
    from sd_train.families import family_class

    cls = None if entry is None else family_class(entry)
    sdxl_flags = cls is None or cls.takes_sdxl_only_flags
    for group_name, group_cls in GROUPS.items():
        if cls is not None and group_name in cls.excluded_option_groups:
            continue
        for f in dataclasses.fields(group_cls):
            if f.metadata["sdxl_only"] and not sdxl_flags:
                continue
            if cls is not None and f.name in cls.option_defaults:
                f = copy.copy(f)
                f.default = cls.option_defaults[f.name]
            yield group_name, f


@dataclass(frozen=True)
class TrainOptions:
    """All options of one run, by group. ``namespace()`` gives kohya's flat ``args`` view."""

    model: ModelOptions = field(default_factory=ModelOptions)
    dataset: DatasetOptions = field(default_factory=DatasetOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    network: NetworkOptions = field(default_factory=NetworkOptions)
    saving: SavingOptions = field(default_factory=SavingOptions)
    logging: LoggingOptions = field(default_factory=LoggingOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    pivotal: PivotalOptions = field(default_factory=PivotalOptions)
    textual_inversion: TextualInversionOptions = field(default_factory=TextualInversionOptions)
    ema: EmaOptions = field(default_factory=EmaOptions)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "TrainOptions":
        """Build from a flat ``{flag_name: value}`` dict; missing names keep their defaults.

        Raises:
            KeyError: A name that is not an option.
        """
        known = {f.name for _, f in option_fields()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"not options: {', '.join(unknown)}")
        groups = {}
        for name, group_cls in GROUPS.items():
            names = {f.name for f in dataclasses.fields(group_cls)}
            groups[name] = group_cls(**{k: v for k, v in values.items() if k in names})
        return cls(**groups)

    def flat(self) -> dict[str, Any]:
        """Every option as ``{kohya_flag_name: value}`` in flag-definition order."""
        out: dict[str, Any] = {}
        for name in GROUPS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def replace(self, **changes: Any) -> "TrainOptions":
        """Return a copy with some options changed, given by flat kohya names."""
        values = self.flat()
        values.update(changes)
        return TrainOptions.from_flat(values)

    def namespace(self) -> argparse.Namespace:
        """kohya's flat ``args``: one attribute per flag (what plugins' ``prepare_network`` get)."""
        return argparse.Namespace(**self.flat())


__all__ = [
    "GROUPS", "TrainOptions", "option_fields", "DatasetOptions", "EmaOptions", "LoggingOptions", "ModelOptions",
    "NetworkOptions", "OptimizerOptions", "PivotalOptions", "SamplingOptions", "SavingOptions",
    "TextualInversionOptions", "TrainingOptions",
]
