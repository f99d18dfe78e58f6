"""The parser's flags against kohya's committed flag lists, and the compat table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sd_train.cli import build_parser
from sd_train.compat import unsupported_table
from sd_train.options import PivotalOptions, option_fields

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OURS = {f.name for _, f in option_fields("sdxl") if f.metadata["ours"]}  # sd-train's own flags


def _kohya(entry: str) -> set[str]:
    names = (ASSETS / f"kohya_flags_{entry}.txt").read_text().split()
    assert len(names) == len(set(names))
    return set(names)


def _parser_flags(entry: str) -> set[str]:
    parser = build_parser(entry)
    return {a.dest for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("entry, count", [("sd", 193), ("sdxl", 196)])
def test_parser_union_compat_equals_kohya(entry, count):
    kohya = _kohya(entry)
    assert len(kohya) == count
    compat = {row.flag for row in unsupported_table()}
    assert (_parser_flags(entry) - OURS) | compat == kohya
    assert compat <= _kohya("sdxl")


@pytest.mark.parametrize("entry, kohya_list, count", [("sd_ti", "ti_sd", 169), ("sdxl_ti", "ti_sdxl", 170)])
def test_textual_inversion_takes_every_kohya_flag(entry, kohya_list, count):
    """kohya's textual-inversion flags (its parser: the shared groups without caption dropout and weighted
    captions, plus its own); sd-train's also take the shared flags kohya reserves for train_network.py."""
    kohya = _kohya(kohya_list)
    assert len(kohya) == count
    ours = _parser_flags(entry) | {row.flag for row in unsupported_table()}
    assert kohya <= ours
    assert not ours & ({f.name for f in dataclasses.fields(PivotalOptions)} | {"network_module", "network_dim"})
    parser = build_parser(entry)
    assert parser.get_default("save_model_as") == "pt"  # kohya's textual-inversion default
    assert parser.prog == ("sdxl_" if entry == "sdxl_ti" else "") + "train_textual_inversion.py"


def test_sdxl_only_flags():
    assert _kohya("sdxl") - _kohya("sd") == {
        "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "disable_mmap_load_safetensors"}
    sdxl_only = {f.name for _, f in option_fields("sdxl") if f.metadata["sdxl_only"]}
    assert sdxl_only == _kohya("sdxl") - _kohya("sd")


def test_every_field_has_one_help_and_consistent_metadata():
    seen = set()
    for _, f in option_fields("sdxl"):
        meta = f.metadata
        assert f.name not in seen
        seen.add(f.name)
        assert isinstance(meta["help"], str) and meta["help"].strip(), f.name
        if meta["flag"]:
            assert f.default is False and meta["type"] is None and meta["nargs"] is None
        if meta["choices"] and f.default is not None:
            assert f.default in meta["choices"], f.name


def test_common_flags_marked():
    common = {f.name for _, f in option_fields("sdxl") if f.metadata["common"]}
    assert 40 <= len(common) <= 46
    assert {"pretrained_model_name_or_path", "network_dim", "learning_rate", "cache_text_encoder_outputs"} <= common
