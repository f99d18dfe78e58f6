"""kohya's resolution order for the options that name a class or module (one place, callable before
any model loads).

- ``--optimizer_type``: ``""`` means AdamW; a kohya name matches case-insensitively (``adamw8bit``,
  ``AdaFactor``); any other name without a dot is a class of ``torch.optim`` (case-sensitive, e.g.
  ``RAdam``); a dotted name is ``module.Class`` (``prodigyopt.Prodigy``,
  ``bitsandbytes.optim.AdEMAMix8bit``, ``LoraEasyCustomOptimizer.came.CAME``).
- ``--lr_scheduler_type``: empty means none; a name without a dot is a class of
  ``torch.optim.lr_scheduler`` (``CosineAnnealingLR``); a dotted name is ``module.Class``.
- ``--network_module``: a module imported by its dotted name (sd-train: unset means ``networks.lora``).

A name that cannot be resolved is a :class:`UserError` naming the option, the value and what to do.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

from library.errors import UserError

_BNB = "bitsandbytes.optim"


class OptimizerClass(NamedTuple):
    """A resolved ``--optimizer_type``: the class and whether kohya adds ``nesterov=True``."""

    cls: type
    nesterov: bool


def kohya_optimizers() -> dict[str, tuple[str, str, str]]:
    """kohya's own optimizer names (lower case) -> ``(module, class, pip package)``."""
    table = {
        "adamw": ("torch.optim", "AdamW", "torch"),
        "sgdnesterov": ("torch.optim", "SGD", "torch"),
        "sgdnesterov8bit": (_BNB, "SGD8bit", "bitsandbytes"),
        "lion": ("lion_pytorch", "Lion", "lion-pytorch"),
        "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
        "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
        "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation"),
        "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
        "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    }
    for name in ("AdamW8bit", "PagedAdamW8bit", "PagedAdamW", "PagedAdamW32bit", "Lion8bit", "PagedLion8bit"):
        table[name.lower()] = (_BNB, name, "bitsandbytes")
    for name in ("DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptLion", "DAdaptSGD"):
        table[name.lower()] = ("dadaptation", name, "dadaptation")
    for name in ("RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree"):
        table[name.lower()] = ("schedulefree", name, "schedulefree")
    return table


def _import(option: str, value: str, module: str, package: str | None = None) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip = package or module.split(".")[0]
        raise UserError(f"--{option} {value}: cannot import it ({exc}); pip install {pip}, or fix the name") \
            from None


def _attribute(option: str, value: str, module: str, name: str, package: str | None = None) -> type:
    found = getattr(_import(option, value, module, package), name, None)
    if found is None:
        raise UserError(f"--{option} {value}: '{module}' has no class '{name}' (names are case-sensitive)")
    return found


def resolve_optimizer(value: str | None) -> OptimizerClass:
    """``--optimizer_type`` in kohya's order (``get_optimizer``): own name, ``torch.optim`` class, dotted path.

    Raises:
        UserError: The module cannot be imported or has no such class.
    """
    name = value or "AdamW"
    entry = kohya_optimizers().get(name.lower())
    if entry is not None:
        return OptimizerClass(_attribute("optimizer_type", name, *entry), name.lower().startswith("sgdnesterov"))
    module, _, cls = name.rpartition(".")
    if not module:
        if not hasattr(importlib.import_module("torch.optim"), name):
            raise UserError(f"--optimizer_type {name}: unknown optimizer; use a kohya name (AdamW, AdamW8bit, "
                            "Lion, Prodigy, Adafactor, …), a torch.optim class or a dotted path module.Class")
        module = "torch.optim"
    return OptimizerClass(_attribute("optimizer_type", name, module, cls or name), False)


def resolve_lr_scheduler_type(value: str) -> type:
    """``--lr_scheduler_type``: a bare name is a ``torch.optim.lr_scheduler`` class, else ``module.Class``."""
    module, _, cls = value.rpartition(".")
    return _attribute("lr_scheduler_type", value, module or "torch.optim.lr_scheduler", cls)


def resolve_network_module(value: str | None) -> ModuleType:
    """``--network_module``: the module itself (unset: ``networks.lora``)."""
    name = value or "networks.lora"
    return _import("network_module", name, name)


def resolve_class(option: str, value: str | None) -> type | ModuleType | None:
    """Resolve the class (or module) named by ``option`` exactly as the trainer will.

    Args:
        option: ``"optimizer_type"``, ``"lr_scheduler_type"`` or ``"network_module"``.
        value: The option's value; for ``lr_scheduler_type`` an empty value resolves to ``None``.

    Raises:
        UserError: The name cannot be resolved (one line naming the option, the value and what to do).
        ValueError: ``option`` is not a class-name option.
    """
    if option == "optimizer_type":
        return resolve_optimizer(value).cls
    if option == "lr_scheduler_type":
        return resolve_lr_scheduler_type(value) if value else None
    if option == "network_module":
        return resolve_network_module(value)
    raise ValueError(f"{option!r} does not name a class")
