"""Command line of the training entry points, generated from the option dataclasses.

Precedence is kohya's: explicit command-line flags > ``--config_file`` values > defaults (CLI.md §3).
Differences from kohya (``# sd-train:``): config-file keys are checked (unknown keys are errors with a
"did you mean" hint) and every value goes through the flag's own converter.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from typing import Any

from library.errors import UserError
from sd_train import config_io
from sd_train.compat import GUI_ONLY_KEYS, check_unsupported
from sd_train.families import ENTRIES, family_class
from sd_train.options import TrainOptions, option_fields
from sd_train.options.rules import normalize, validate

logger = logging.getLogger(__name__)

PROGS = {entry: cls.script() for entry, cls in ENTRIES.items()}
NEVER_WRITTEN = ("config_file", "output_config", "config_skip", "wandb_api_key", "huggingface_token", "debug")
_ACCEPTED = {str: (str,), int: (int, str), float: (int, float, str)}
_HINT_SPREAD = 0.1
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number"}

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


def _flatten(doc: dict, path: str) -> dict[str, tuple[Any, str]]:
    """One level of tables into ``{key: (value, where)}``; later occurrences win (with a warning)."""
    flat: dict[str, tuple[Any, str]] = {}

    def put(key: str, value: Any, where: str) -> None:
        if key in flat:
            logger.warning("%s: key '%s' of %s is overridden by %s", path, key, flat[key][1], where)
            del flat[key]
        flat[key] = (value, where)

    for key, value in doc.items():
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                put(sub_key, sub_value, f"{path} [{key}]")
        else:
            put(key, value, path)
    return flat


def _unknown_key(key: str, where: str, entry: str) -> UserError:
    if key in GUI_ONLY_KEYS:
        return UserError(f"{where}: key '{key}' is a kohya_ss GUI setting, not a training option: "
                         f"{GUI_ONLY_KEYS[key]}")
    owners = [e for e in ENTRIES if e != entry and key in {f.name for _, f in option_fields(e)}]
    if owners:
        return UserError(f"{where}: key '{key}' is only valid for {PROGS[owners[0]]}")
    names = sorted({f.name for _, f in option_fields()} - {"debug"})
    hints = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    best = difflib.SequenceMatcher(None, key, hints[0]).ratio() if hints else 0.0
    # sd-train: of difflib's matches, only those nearly as close as the best one are offered
    hints = [h for h in hints if difflib.SequenceMatcher(None, key, h).ratio() >= best - _HINT_SPREAD]
    if not hints:
        return UserError(f"{where}: unknown key '{key}'. See {PROGS[entry]} --help for the option names")
    quoted = [f"'{h}'" for h in hints]
    choice = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return UserError(f"{where}: unknown key '{key}'. Did you mean {choice}?")


def _convert_scalar(meta: dict, value: Any, where: str) -> Any:
    if meta["flag"]:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    conv = meta["type"] or str
    accepted = _ACCEPTED.get(conv, (int, float, str) if conv.__name__ == "int_or_ratio" else (str,))
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise UserError(f"{where}: expected {_TYPE_WORDS.get(conv, 'a string')}, got {value!r}")
    try:
        result = conv(value)
    except ValueError as exc:
        raise UserError(f"{where}: invalid value {value!r} ({exc})") from exc
    if meta["choices"] and result not in meta["choices"]:
        raise UserError(f"{where}: invalid choice {value!r} (choose from {', '.join(map(str, meta['choices']))})")
    return result


def convert_value(f, value: Any, where: str) -> Any:
    """Convert one config-file value with its flag's converter (CLI.md §3 table).

    Args:
        f: The option's dataclass field.
        value: The TOML value.
        where: ``"file [table]: key 'name'"`` used in error messages.
    """
    meta = f.metadata
    if meta["nargs"]:  # sd-train: a scalar becomes a one-element list
        items = value if isinstance(value, list) else [value]
        return [_convert_scalar(meta, item, where) for item in items]
    return _convert_scalar(meta, value, where)


def load_config_file(path: str, entry: str, skip: str | None = None) -> dict[str, Any]:
    """Read a training TOML/JSON or kohya_ss GUI preset into converted ``{flag_name: value}`` (flattened
    one level; see :mod:`sd_train.config_io`).

    Args:
        path: TOML or JSON path (``.toml`` appended when it has neither suffix).
        entry: ``"sd"`` or ``"sdxl"``; keys of the other entry point are errors.
        skip: ``--config_skip``: comma-separated keys of the file to ignore.

    Raises:
        UserError: Missing file (exit 1), bad TOML, unknown key or bad value (exit 2).
    """
    path = config_io.config_path(path)
    fields = {f.name: f for _, f in option_fields(entry)}
    values = {}
    doc = config_io.read_config(path, entry, skip, build_parser(entry, suppress_defaults=True).parse_args)
    for key, (value, where) in _flatten(doc, path).items():
        if key not in fields or key == "debug":
            raise _unknown_key(key, where, entry)
        values[key] = convert_value(fields[key], value, f"{where}: key '{key}'")
    return values


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
    if given.get("config_file"):
        path = config_io.config_path(given["config_file"])
        values.update(load_config_file(path, entry, given.get("config_skip")))
        given["config_file"] = config_io.stored_name(path)
    values.update(given)
    notes = normalize(values, entry)
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
    return config_io.write_document(out, config_io.config_path(path))
