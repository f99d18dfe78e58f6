"""Command line of the training entry points, generated from the option dataclasses.

Precedence is kohya's: explicit command-line flags > ``--config_file`` values > defaults (CLI.md §3).
Config files are read by :mod:`sd_train.config_file`; values that kohya's file path lets past argparse
(``false`` / ``""``, values outside ``choices``) are then read as kohya reads them
(:mod:`sd_train.kohya_values`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from library.errors import UserError
from sd_train import config_io
from sd_train.argparser import build_parser
from sd_train.compat import check_unsupported
from sd_train.config_file import PROGS, load_config_file, toml_path
from sd_train.families import family_class
from sd_train.kohya_values import read_values
from sd_train.options import TrainOptions, option_fields
from sd_train.options.rules import normalize, validate

logger = logging.getLogger(__name__)

NEVER_WRITTEN = ("config_file", "output_config", "config_skip", "wandb_api_key", "huggingface_token", "debug", "dry_run")

__all__ = ["PROGS", "build_parser", "load_config_file", "parse_options", "validate", "write_output_config"]


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
    if given.get("output_config") and not config_io.is_preset_file(given.get("config_file")):
        if not given.get("config_file"):
            raise UserError("--output_config needs --config_file OUT.toml (the file to write)")
        values.update(given)
        return TrainOptions.from_flat(values)
    origins: dict[str, str] = {}
    if given.get("config_file"):
        path = toml_path(given["config_file"])
        values.update(load_config_file(path, entry, origins, given.get("config_skip")))
        given["config_file"] = config_io.stored_name(path)
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
    """Write the options that differ from the parser defaults as a flat TOML, or JSON for a ``.json`` path
    (CLI.md §4). A kohya_ss GUI preset is the input, never the output: its effective flags print to stdout.

    Args:
        opts_or_ns: Parsed options or kohya's flat namespace.
        path: Output path (``.toml`` appended without .toml/.json); never overwritten.
        parser: The entry point's parser (``build_parser(entry)``): order and defaults (default:
            the SDXL parser, whose defaults and order are the same for every shared flag).

    Returns:
        The path written (``"-"`` when printed).

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
    if config_io.is_preset_file(path):
        sys.stdout.write(toml.dumps(out))
        return "-"
    return config_io.write_document(out, toml_path(path))
