"""Reading a ``--config_file`` TOML into flag values (CLI.md §3, docs/CONFIG_VALUES.md).

kohya flattens one level of tables and hands every value to argparse untouched: no ``type=``, no
``choices``. sd-train flattens the same way and converts each value with its flag's converter, but lets
through what kohya's file path lets through: ``false`` / ``""`` for string options, ``0`` / ``1`` for
flags and values outside a flag's ``choices``. :mod:`sd_train.kohya_values` then reads those the way
kohya's code does, once the command line is merged in.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from library.errors import UserError
from sd_train import config_io
from sd_train.argparser import build_parser
from sd_train.compat import GUI_ONLY_KEYS
from sd_train.families import ENTRIES
from sd_train.options import option_fields

logger = logging.getLogger(__name__)

_ACCEPTED = {str: (str,), int: (int, str), float: (int, float, str)}
_HINT_SPREAD = 0.1
_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number",
               "int_or_ratio": 'a step count, a fraction below 1 or "N%"'}
PROGS = {entry: cls.script() for entry, cls in ENTRIES.items()}


def toml_path(path: str) -> str:
    """``path`` with ``.toml`` appended unless it ends in ``.toml`` or ``.json`` (kohya-compat: .toml appended;
    sd-train: JSON configs, :mod:`sd_train.config_io`)."""
    return path if path.endswith((".toml", ".json")) else path + ".toml"


def toml_value(value: Any) -> str:
    """``value`` spelled as in a TOML file (``true``, ``""``, ``128``, ``["a"]``), for error lines."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


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


def _flag_value(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # kohya-compat: the kohya_ss GUI writes persistent_data_loader_workers = 1
        if value not in (0, 1):
            logger.warning("%s = %s: read as true (kohya tests the value's truth)", where, value)
        return bool(value)
    if value == "":  # kohya-compat: an empty string is false to kohya
        return False
    raise UserError(f"{where} = {toml_value(value)}: expected true or false; write it without quotes "
                    "(kohya would read every non-empty string, even \"false\", as true)")


def _resolution_value(value: Any) -> Any:
    """sd-train: ``resolution = 512`` / ``[1024, 768]`` as in a dataset TOML (kohya's file path needs a string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        return f"{value[0]},{value[1]}"
    return value


def _convert_scalar(meta: dict, value: Any, where: str) -> Any:
    if meta["flag"]:
        return _flag_value(value, where)
    conv = meta["type"] or str
    accepted = _ACCEPTED.get(conv, (int, float, str) if conv.__name__ == "int_or_ratio" else (str,))
    if accepted == (str,) and (value is False or value == ""):  # kohya-compat: read by sd_train.kohya_values
        return value
    if conv is int and isinstance(value, float) and value.is_integer():  # sd-train: 10.0 is 10
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, accepted) or value == "":
        raise UserError(f"{where} = {toml_value(value)}: expected {_TYPE_WORDS.get(conv.__name__, 'a string')}; "
                        "fix the value or remove the key")
    try:
        return conv(value)
    except ValueError as exc:
        raise UserError(f"{where} = {toml_value(value)}: invalid value ({exc})") from exc


def convert_value(f, value: Any, where: str) -> Any:
    """Convert one config-file value with its flag's converter (CLI.md §3 table).

    Values outside the flag's ``choices`` are returned as they are; :func:`sd_train.kohya_values.read_values`
    decides about them once the command line is merged in.

    Args:
        f: The option's dataclass field.
        value: The TOML value.
        where: ``"file [table]: key"`` used in error messages.
    """
    meta = f.metadata
    if isinstance(value, dict):
        raise UserError(f"{where}: a table inside a table; only one level of tables is flattened, so move its "
                        "keys up")
    if f.name == "resolution":
        value = _resolution_value(value)
    if meta["nargs"]:  # sd-train: a scalar becomes a one-element list
        if value == "":  # kohya-compat: kohya iterates over the empty string, i.e. over nothing
            return []
        if value is False:
            raise UserError(f"{where} = false: expected a list; remove the key or write {f.name} = []")
        items = value if isinstance(value, list) else [value]
        return [_convert_scalar(meta, item, where) for item in items]
    return _convert_scalar(meta, value, where)


def load_config_file(path: str, entry: str, origins: dict[str, str] | None = None,
                     skip: str | None = None) -> dict[str, Any]:
    """Read a training TOML or JSON, or a kohya_ss GUI preset (:mod:`sd_train.config_io`), into converted
    ``{flag_name: value}`` (flattened one level).

    Args:
        path: TOML or JSON path (``.toml`` appended without either suffix).
        entry: ``"sd"`` or ``"sdxl"``; keys of the other entry point are errors.
        origins: Filled with ``{flag_name: "file [table]"}`` (where each value came from), when given.
        skip: ``--config_skip``: comma-separated keys of the file to ignore.

    Raises:
        UserError: Missing file (exit 1), bad TOML, unknown key or bad value (exit 2).
    """
    path = toml_path(path)
    fields = {f.name: f for _, f in option_fields(entry)}
    values = {}
    doc = config_io.read_config(path, entry, skip, build_parser(entry, suppress_defaults=True).parse_args)
    for key, (value, where) in _flatten(doc, path).items():
        if key in GUI_ONLY_KEYS:  # kohya-compat: sd-scripts ignores the kohya_ss GUI's own keys
            logger.warning("%s: %s = %s is a kohya_ss GUI setting, not a training option; ignored (as kohya "
                           "does): %s", where, key, toml_value(value), GUI_ONLY_KEYS[key])
            continue
        if key not in fields or key == "debug":
            raise _unknown_key(key, where, entry)
        values[key] = convert_value(fields[key], value, f"{where}: {key}")
        if origins is not None:
            origins[key] = where
    return values
