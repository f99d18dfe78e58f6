"""The argparse parser of a training entry point, generated from the option dataclasses (CLI.md §5)."""

from __future__ import annotations

import argparse
from typing import Any

from library.errors import UserError
from sd_train.families import family_class
from sd_train.options import option_fields


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors raise :class:`UserError` (exit 2) instead of exiting."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{self.prog}: {message}", exit_code=2)


def build_parser(entry: str, *, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Build the argparse parser of one entry point from the option fields.

    Args:
        entry: ``"sd"`` (train_network.py, 193 kohya flags) or ``"sdxl"`` (196).
        suppress_defaults: Leave unset options out of the result (used to find explicit flags).

    Returns:
        The parser (``allow_abbrev`` on, as kohya).
    """
    parser = _Parser(prog=family_class(entry).script(), allow_abbrev=True,
                     argument_default=argparse.SUPPRESS if suppress_defaults else None)
    for _, f in option_fields(entry):
        meta = f.metadata
        kwargs: dict[str, Any] = {"help": meta["help"].replace("%", "%%")}  # argparse formats help with %
        if not suppress_defaults:
            kwargs["default"] = f.default
        if meta["flag"]:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=meta["type"] or str)
            if meta["nargs"]:
                kwargs["nargs"] = meta["nargs"]
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser
