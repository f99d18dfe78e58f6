"""Every option a user gives reaches the trainer, or a line names it (issue #18, "done when").

Three ways in for training options (command line, flat ``--config_file``, sectioned ``--config_file``) and
three levels of the dataset TOML, each checked option by option; then a scan of the code that the trainer runs
for every option it never reads.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pytest

from library.dataset.config import SCHEMA, CliDefaults
from library.dataset.plan import build_plan
from library.errors import UserError
from sd_train.cli import parse_options
from sd_train.compat import unsupported_table
from sd_train.config_file import toml_value
from sd_train.options import option_fields

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("command line", "flat file", "sectioned file")
IMPLIES = {"cache_latents_to_disk": "cache_latents",  # kohya: the _to_disk flags turn the caches on
           "cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs"}


def _sample(f):
    """A valid, non-default value of option ``f`` (native type, as TOML would give it)."""
    meta = f.metadata
    if meta["flag"]:
        return True
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != f.default)
    kind = getattr(meta["type"], "__name__", "str")
    item = {"int": 3, "float": 0.5, "int_or_ratio": 5, "resolution_type": "64,32",
            "float_pair": "1.5,2.5"}.get(kind, "x.y")
    return [item] if meta["nargs"] else item


def _give(tmp_path, name, value, source):
    if source == "command line":
        if value is True:
            return [f"--{name}"]
        items = value if isinstance(value, list) else [value]
        return [f"--{name}", *map(str, items)]
    line = f"{name} = {toml_value(value)}\n"
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(line if source == "flat file" else f"[some_section]\n{line}", encoding="utf-8")
    return ["--config_file", str(cfg)]


def _outcome(argv, entry, caplog):
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):
            return parse_options(argv, entry).flat(), caplog.messages
    except UserError as exc:
        return None, [str(exc)]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("entry", ["sd", "sdxl"])
def test_every_training_option_reaches_the_options_or_is_named(tmp_path, caplog, entry, source):
    lost = []
    for _, f in option_fields("sdxl"):
        if f.name in ("config_file", "output_config"):
            continue  # the file itself, and "write the file instead of training" (tests/train/test_cli.py)
        value = _sample(f)
        flat, lines = _outcome(_give(tmp_path, f.name, value, source), entry, caplog)
        if flat is not None and flat[f.name] == value:
            continue
        if not any(f.name in line or IMPLIES.get(f.name, "-") in line for line in lines):
            lost.append(f"{f.name} = {value!r}: got {None if flat is None else flat[f.name]!r}, lines {lines}")
    assert not lost, "\n".join(lost)


def _names_read(paths) -> set[str]:
    """Attribute names and exact string constants used by the code in ``paths``."""
    seen = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                seen.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                seen.add(node.value)
    return seen


# Options read through a computed name; each is checked at run time by the test named here.
COMPUTED = {
    **{f"metadata_{n}": "test_metadata_options_reach_the_file" for n in (
        "author", "description", "license", "tags", "usage_hint", "thumbnail", "merged_from", "trigger_phrase",
        "preprocessor", "is_negative_embedding")},
    "debug": "library.errors.run_cli looks for '--debug' in argv",
    "config_skip": "tests/train/test_config_files.py (cli.py hands it to the config reader)",
}


def test_every_option_is_read_by_the_trainer_or_named_in_a_line():
    """The parsers and tables that only *name* options do not count as reading them."""
    naming_only = {"cli.py", "config_file.py", "kohya_values.py", "compat.py", "gui_preset.py"}
    paths = [p for d in ("sd_train", "library", "networks") for p in (ROOT / d).rglob("*.py")
             if p.name not in naming_only and not (p.parent.name == "options" and p.name != "rules.py")]
    unread = {f.name for _, f in option_fields("sdxl")} - _names_read(paths)
    named = {row.flag for row in unsupported_table()}  # refused or warned about when set (CLI.md §12)
    assert unread - named - set(COMPUTED) == set()
    assert set(COMPUTED) <= unread | named  # no stale entry


def test_metadata_options_reach_the_file():
    from sd_train.metadata import build_modelspec
    from sd_train.options import TrainOptions

    names = [n for n in COMPUTED if n.startswith("metadata_")]
    opts = TrainOptions().replace(**{n: f"value of {n}" for n in names if n != "metadata_thumbnail"},
                                  metadata_thumbnail="data:image/png;base64,")
    spec = build_modelspec(opts.model, opts.dataset, opts.training, opts.saving, family="sdxl", training_started_at=0)
    assert {f"modelspec.{n[9:]}" for n in names} <= set(spec)
    assert spec["modelspec.author"] == "value of metadata_author"


# --- dataset TOML: every key at every level it is allowed, and the command-line fallbacks ---------------------

def _dataset_sample(key):
    kind, _, _, default = SCHEMA[key]
    values = {"int": 3, "bool": True, "float": 0.25, "num": 0.5, "str": "x", "reso": [96, 64],
              "pair": [1.5, 2.5], "table": {"a": 1}}
    value = values[kind]
    if key == "resize_interpolation":
        value = "box"
    assert value != default
    return value


def _resolved(spec, key):
    ds, sub = spec.datasets[0], spec.datasets[0].subsets[0]
    value = getattr(sub, key) if hasattr(sub, key) else getattr(ds, key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("level", ["general", "dataset", "subset"])
def test_every_dataset_key_reaches_the_plan(tmp_path, level):
    lost = []
    for key, (_, levels, _, _) in SCHEMA.items():
        if {"general": "G", "dataset": "D", "subset": "S"}[level] not in levels or key in (
                "image_dir", "metadata_file", "conditioning_data_dir"):
            continue
        value = _dataset_sample(key)
        subset = {"image_dir": "imgs"}  # a DreamBooth subset: every key but metadata_file / conditioning_data_dir
        tables = {"general": {}, "dataset": {} if key == "resolution" else {"resolution": 64}, "subset": subset}
        tables[level][key] = value
        data = {"general": tables["general"], "datasets": [{**tables["dataset"], "subsets": [subset]}]}
        try:
            plan = _plan(tmp_path, data)
        except UserError as exc:
            lost.append(f"{level}.{key}: {exc}")
            continue
        expected = value if key != "caption_extension" else "." + value
        if _resolved(plan, key) != (expected if key != "resolution" else [96, 64]):
            lost.append(f"{level}.{key} = {value!r}: resolved to {_resolved(plan, key)!r}")
    assert not lost, "\n".join(lost)


def _plan(tmp_path, data, **cli):
    import json

    path = tmp_path / "d.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return build_plan(CliDefaults(dataset_config=str(path), **cli))


def test_every_command_line_fallback_reaches_the_plan(tmp_path):
    """kohya's BlueprintGenerator falls back to the argparse value for every key the TOML leaves out."""
    lost = []
    names = {f.name for f in dataclasses.fields(CliDefaults)}
    renamed = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
    for key in SCHEMA:
        flag = renamed.get(key, key)
        if flag not in names or key in ("image_dir", "metadata_file", "conditioning_data_dir", "num_repeats"):
            continue
        value = _dataset_sample(key)
        if key == "face_crop_aug_range":
            cli_value = "1.5,2.5"
        elif key == "resolution":
            cli_value = "96,64"
        else:
            cli_value = value
        plan = _plan(tmp_path, {"datasets": [{"subsets": [{"image_dir": "imgs"}]}]}, **{flag: cli_value},
                     **({} if key == "resolution" else {"resolution": "64"}))
        expected = {"caption_extension": ".x", "resolution": [96, 64]}.get(key, value)
        if _resolved(plan, key) != expected:
            lost.append(f"--{flag} {cli_value!r}: resolved to {_resolved(plan, key)!r}")
    assert not lost, "\n".join(lost)
