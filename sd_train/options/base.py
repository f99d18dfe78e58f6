"""Field helper shared by the option groups.

Every option is a dataclass field whose ``metadata`` carries what ``sd_train.cli`` needs to build
the argparse parser, convert ``--config_file`` values and write ``--output_config``: the argparse
``type``, ``nargs``, ``choices``, whether it is a ``store_true`` flag, whether it is commonly used
(★ in CLI.md §5), whether it exists only for ``sdxl_train_network.py`` and ONE help text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def opt(
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = str,
    nargs: str | None = None,
    choices: tuple | None = None,
    flag: bool = False,
    common: bool = False,
    sdxl_only: bool = False,
    ours: bool = False,
) -> Any:
    """Declare one command-line option as a dataclass field.

    Args:
        default: kohya's default value (``None`` when kohya has none).
        help: The one help text of the option.
        type: Converter from one string (``str``, ``int``, ``float`` or a parser such as
            ``int_or_ratio``); ignored for flags.
        nargs: ``"*"`` for list options, else ``None``.
        choices: Allowed values after conversion (``None`` is always allowed as the default).
        flag: ``store_true`` option (no value).
        common: Most runs set it (★ in CLI.md §5).
        sdxl_only: Accepted only by ``sdxl_train_network.py``.
        ours: An sd-train addition, not a flag of kohya's ``train_network.py`` (the README table marks it).

    Returns:
        A ``dataclasses.field`` with the metadata attached.
    """
    meta = dict(
        help=help,
        type=None if flag else type,
        nargs=nargs,
        choices=choices,
        flag=flag,
        common=common,
        sdxl_only=sdxl_only,
        ours=ours,
    )
    return dataclasses.field(default=default, metadata=meta)


def flag(help: str, *, common: bool = False, sdxl_only: bool = False, ours: bool = False) -> Any:
    """Declare a ``store_true`` option (default ``False``)."""
    return opt(False, help, flag=True, common=common, sdxl_only=sdxl_only, ours=ours)


def int_or_ratio(value: Any) -> int | float:
    """Parse ``--lr_warmup_steps`` / ``--lr_decay_steps``: a step count, a fraction or ``"N%"``.

    Args:
        value: ``"100"``, ``"0.05"``, ``"5%"`` (CLI strings) or an int / float (TOML values).

    Returns:
        An ``int`` step count, or a ``float`` fraction in ``[0, 1)``.

    Raises:
        ValueError: Negative values, non-integers ≥ 1 (``1.5``), booleans and other types.
    """
    if isinstance(value, bool):
        raise ValueError("expected a step count, a fraction < 1 or 'N%'")
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return _checked_ratio(float(text[:-1]) / 100.0, value)
        try:
            return _checked_count(int(text))
        except ValueError:
            value = float(text)
    if isinstance(value, int):
        return _checked_count(value)
    if isinstance(value, float):
        if value < 1:
            return _checked_ratio(value, value)
        if value.is_integer():
            return int(value)
    raise ValueError(f"{value!r}: expected a step count, a fraction < 1 or 'N%'")


def _checked_count(count: int) -> int:
    if count < 0:
        raise ValueError(f"{count}: must not be negative")
    return count


def _checked_ratio(ratio: float, given: Any) -> float:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{given!r}: a fraction must be in [0, 1)")
    return ratio


def resolve_step_count(value: int | float | None, total_steps: int) -> int:
    """Turn an ``int_or_ratio`` value into steps: fractions are ``int(ratio × total_steps)``."""
    if value is None:
        return 0
    if isinstance(value, float):
        return int(value * total_steps)
    return int(value)


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """Parse ``--resolution``: ``"S"`` means ``(S, S)``, ``"W,H"`` means ``(W, H)`` in pixels.

    Raises:
        ValueError: Anything else, or a side that is not a positive integer.
    """
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"resolution {text!r}: expected 'SIZE' or 'WIDTH,HEIGHT' in pixels")
    width = int(parts[0])
    return (width, int(parts[-1]))


def resolution_type(text: str) -> str:
    """argparse type of ``--resolution``: validates and keeps the string."""
    parse_resolution(text)
    return text


def float_pair(text: str) -> str:
    """argparse type of ``--face_crop_aug_range``: ``"a,b"`` floats; keeps the string."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected 'a,b'")
    [float(p) for p in parts]
    return text
