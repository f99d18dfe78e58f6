"""Training config files in and out: TOML or JSON, kohya_ss GUI presets, and ``--config_skip``.

``--config_file`` takes a TOML file (kohya) or, as an sd-train addition, a JSON file with the same
layout (flat, or one level of sections); a JSON object with ``LoRA_type`` is a kohya_ss GUI preset and
is mapped to flags by :mod:`sd_train.gui_preset`. ``--output_config`` writes JSON when the target ends
in ``.json``, else TOML. ``--config_skip`` (LoRA_Easy_Training_Scripts' ``json_load_skip_list``) drops
keys of the file before they are read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from library.errors import UserError
from sd_train import gui_preset

logger = logging.getLogger(__name__)

JSON_SUFFIX = ".json"


def stored_name(path: str) -> str:
    """What ``config_file`` holds after loading: kohya strips ``.toml``; a ``.json`` name stays whole."""
    return path if path.endswith(JSON_SUFFIX) else os.path.splitext(path)[0]  # kohya-compat


def _drop_nulls(doc: dict) -> dict:
    """JSON ``null`` means "not set", like a key missing from a TOML file (one level of sections)."""
    return {k: _drop_nulls(v) if isinstance(v, dict) else v for k, v in doc.items() if v is not None}


def read_document(path: str) -> dict:
    """Read a config file (TOML, or JSON when it ends in ``.json``) into a dict.

    Raises:
        UserError: missing file (exit 1), a file that does not parse, or JSON that is not an object.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found (--config_file)", exit_code=1)
    if path.endswith(JSON_SUFFIX):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: invalid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise UserError(f"{path}: a JSON config must be an object of option names and values")
        return _drop_nulls(doc)
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from exc


def parse_skip(text: str | None) -> list[str]:
    """``--config_skip "a,b, c"`` -> ``["a", "b", "c"]``."""
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def drop_skipped(doc: dict, skip: list[str], path: str) -> dict:
    """Remove the ``skip`` keys from the top level and from every section; warn about names not found."""
    found = set()

    def keep(table: dict) -> dict:
        found.update(k for k in table if k in skip)
        return {k: keep(v) if isinstance(v, dict) else v for k, v in table.items() if k not in skip}

    kept = keep(doc)
    missing = [k for k in skip if k not in found]
    if missing:
        logger.warning("--config_skip: %s not in %s", ", ".join(missing), path)
    return kept


def read_config(path: str, entry: str, skip: str | None, parse_args) -> dict:
    """The keys a config file gives: the file less ``--config_skip`` keys; a kohya_ss GUI preset comes
    back already mapped to flag names (:func:`sd_train.gui_preset.preset_flags`).

    Args:
        path: The file (see :func:`sd_train.config_file.toml_path`).
        entry: ``"sd"`` or ``"sdxl"`` (a GUI preset says which script it is for).
        skip: ``--config_skip`` value, comma-separated keys of the file.
        parse_args: The entry point's ``parse_args`` (defaults suppressed), for a preset's extra flags.
    """
    doc = drop_skipped(read_document(path), parse_skip(skip), path)
    return gui_preset.preset_flags(doc, entry, path, parse_args) if gui_preset.is_gui_preset(doc) else doc


def is_preset_file(path: str | None) -> bool:
    """``path`` is an existing ``.json`` file holding a kohya_ss GUI preset (then it is never an output)."""
    return bool(path) and path.endswith(JSON_SUFFIX) and os.path.isfile(path) and \
        gui_preset.is_gui_preset(read_document(path))


def write_document(values: dict[str, Any], path: str) -> str:
    """Write ``values`` as a flat JSON (``.json``) or TOML file; never overwrites (exit 1)."""
    import toml

    if os.path.exists(path):
        raise UserError(f"{path}: already exists; --output_config never overwrites a file", exit_code=1)
    text = json.dumps(values, indent=2) + "\n" if path.endswith(JSON_SUFFIX) else toml.dumps(values)
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)
    return path
