"""Smaller fidelity points: Adafactor's scheduler in the metadata, tool help texts, the SDXL merge tool's name,
check_lora_weights without diffusers for SDXL files, and the ``tests`` extra."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from library.io.safetensors_io import read_header
from sd_train.sdxl_train_network import main as sdxl_main

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ["cache_latents", "cache_text_encoder_outputs", "check_dataset", "check_lora_weights", "convert_checkpoint",
         "convert_lora", "extract_lora", "make_sample_dataset", "make_tiny_model", "merge_lora", "resize_lora",
         "show_metadata", "svd_merge_lora"]


def test_adafactor_relative_step_is_recorded_as_kohya_does(plain_assets, tmp_path):
    """kohya rewrites ``args.lr_scheduler`` to ``adafactor:<lr>`` and ``args.learning_rate`` to None before it writes
    the metadata (before: ``constant`` and the given rate)."""
    ckpt, toml = plain_assets
    out = tmp_path / "out"
    assert sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(out), "--network_module", "networks.lora", "--network_train_unet_only",
                      "--max_train_steps", "1", "--max_data_loader_n_workers", "0", "--optimizer_type", "Adafactor",
                      "--learning_rate", "1e-3"]) == 0
    meta = read_header(out / "last.safetensors")[1]
    assert (meta["ss_lr_scheduler"], meta["ss_learning_rate"]) == ("adafactor:0.001", "None")


def _help(tool: str, capsys, prog_main: str = "main") -> str:
    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as done:
        getattr(module, prog_main)(["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_has_no_spec_references_or_markup(tool, capsys):
    text = _help(tool, capsys)
    assert not re.search(r"§|[A-Z]+\.md|``|:class:|:func:|:mod:", text), text


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_flag_has_help(tool):
    """About 45 dataset flags of check_dataset / cache_latents had no help at all."""
    parser = importlib.import_module(f"tools.{tool}").setup_parser()
    assert [a.dest for a in parser._actions if not a.help] == []


@pytest.mark.parametrize("tool", ["check_dataset", "cache_latents"])
def test_dataset_flags_of_tools_have_the_trainers_help(tool):
    import dataclasses

    from library.dataset.config import CliDefaults
    from sd_train.cli import build_parser

    names = [f.name for f in dataclasses.fields(CliDefaults)]
    trainer = {a.dest: a.help for a in build_parser("sdxl")._actions}
    tool_help = {a.dest: a.help for a in importlib.import_module(f"tools.{tool}").setup_parser()._actions}
    assert len(names) >= 40
    assert {k: tool_help[k] for k in names} == {k: trainer[k] for k in names}


def test_sdxl_merge_lora_names_itself(capsys):
    assert _help("merge_lora", capsys, "sdxl_main").startswith("usage: sdxl_merge_lora ")
    assert _help("merge_lora", capsys).startswith("usage: merge_lora ")
    scripts = Path(ROOT / "pyproject.toml").read_text()
    assert 'sdxl_merge_lora = "tools.merge_lora:sdxl_main"' in scripts


def test_check_lora_weights_builds_only_the_tables_a_file_can_match(plain_assets, tmp_path, monkeypatch, capsys):
    """Before: the SD1 and SD2 tables were built for every file (diffusers import, 7–20 s for a 0.7 MB LoRA)."""
    import tools.check_lora_weights as clw

    ckpt, toml = plain_assets
    out = tmp_path / "out"
    assert sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                      "--output_dir", str(out), "--network_module", "networks.lora", "--network_train_unet_only",
                      "--max_train_steps", "1", "--max_data_loader_n_workers", "0"]) == 0
    built = []
    real = clw.unet_name_table
    monkeypatch.setattr(clw, "unet_name_table", lambda family: built.append(family) or real(family))
    assert clw.main([str(out / "last.safetensors")]) == 0
    assert built == ["sdxl"]
    assert "architecture: sdxl (132/132 module names match)" in capsys.readouterr().out


def test_tests_extra_has_every_optional_package_the_tests_import():
    """dadaptation and schedulefree were missing: their tests failed in a venv made from the extra alone."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=;\[ ]", d)[0].lower() for d in project["dependencies"] +
             project["optional-dependencies"]["tests"]}
    assert {"dadaptation", "schedulefree", "prodigyopt", "lion-pytorch", "lycoris-lora", "peft", "wandb",
            "scipy", "pytest", "pytest-xdist", "tensorboard"} <= names
