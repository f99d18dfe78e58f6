"""Command line of the training entry points, generated from the option dataclasses.

Precedence is kohya's: explicit command-line flags > ``--config_file`` values > defaults (CLI.md §3).
Config files are read by :mod:`sd_train.config_file`; values that kohya's file path lets past argparse
(``false`` / ``""``, values outside ``choices``) are then read as kohya reads them
(:mod:`sd_train.kohya_values`).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from library.errors import UserError
from sd_train.compat import check_unsupported
from sd_train.config_file import PROGS, load_config_file, toml_path
from sd_train.families import family_class
from sd_train.kohya_values import read_values
from sd_train.options import TrainOptions, option_fields
from sd_train.options.rules import normalize, validate

logger = logging.getLogger(__name__)

NEVER_WRITTEN = ("config_file", "output_config", "wandb_api_key", "huggingface_token", "debug")

__all__ = ["PROGS", "build_parser", "load_config_file", "parse_options", "validate", "write_output_config"]


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


def parse_options(argv: list[str] | None, entry: str) -> TrainOptions:
    """Parse the command line (and ``--config_file``) into validated options.

    Warnings from the compatibility table and the cross-flag rules are logged. With
    ``--output_config`` the file is NOT read (it is the output); the caller then calls
    :func:`write_output_config` and exits 0.

    Args:
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).
        entry: ``"sd"`` or ``"sdxl"``.

    Raises:
        UserError: Any usage error (exit 2), or a missing config file (exit 1).
    """
    family_class(entry)  # ValueError for an unknown entry
    given = vars(build_parser(entry, suppress_defaults=True).parse_args(argv))
    values = {f.name: f.default for _, f in option_fields(entry)}
    if given.get("output_config"):
        if not given.get("config_file"):
            raise UserError("--output_config needs --config_file OUT.toml (the file to write)")
        values.update(given)
        return TrainOptions.from_flat(values)
    origins: dict[str, str] = {}
    if given.get("config_file"):
        path = toml_path(given["config_file"])
        values.update(load_config_file(path, entry, origins))
        given["config_file"] = os.path.splitext(path)[0]  # kohya-compat: stored without extension
    values.update(given)
    origins.update(dict.fromkeys(given, "command line"))
    notes = read_values(values, origins)
    notes += normalize(values, entry)
    options = TrainOptions.from_flat(values)
    notes += check_unsupported(options.namespace())
    notes += validate(options, entry)
    for note in notes:
        logger.warning(note)
    return options


def write_output_config(opts_or_ns: TrainOptions | argparse.Namespace, path: str,
                        parser: argparse.ArgumentParser | None = None) -> str:
    """Write the options that differ from the parser defaults as a flat TOML (CLI.md §4).

    Args:
        opts_or_ns: Parsed options or kohya's flat namespace.
        path: Output path (``.toml`` appended when missing); never overwritten.
        parser: The entry point's parser (``build_parser(entry)``): order and defaults (default:
            the SDXL parser, whose defaults and order are the same for every shared flag).

    Returns:
        The path written.

    Raises:
        UserError: The file exists (exit 1).
    """
    import toml

    values = opts_or_ns.flat() if isinstance(opts_or_ns, TrainOptions) else vars(opts_or_ns)
    out = {}
    for action in (parser or build_parser("sdxl"))._actions:
        name = action.dest
        if name in NEVER_WRITTEN or name not in values or action.default == argparse.SUPPRESS:
            continue
        if values[name] != action.default and values[name] is not None:
            out[name] = values[name]
    path = toml_path(path)
    if os.path.exists(path):
        raise UserError(f"{path}: already exists; --output_config never overwrites a file", exit_code=1)
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(toml.dumps(out))
    return path
