"""--config_file as JSON (flat or sectioned, same semantics as TOML), --output_config to JSON, --config_skip."""

from __future__ import annotations

import json
import logging

import pytest
import toml

from library.errors import UserError
from sd_train.cli import build_parser, load_config_file, parse_options
from sd_train.sdxl_train_network import main as sdxl_main

SECTIONED = {  # top-level key first: TOML writers put it there, and the later table value wins
    "network_dim": 32,
    "model_arguments": {"pretrained_model_name_or_path": "m.safetensors", "v_parameterization": True},
    "additional_network": {"network_dim": 16, "network_alpha": 8, "network_args": ["conv_dim=4", "conv_alpha=1"]},
    "training_arguments": {"lr_warmup_steps": "5%", "max_train_steps": "100", "text_encoder_lr": 1e-5},
}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_equals_toml_flat_and_sectioned(tmp_path):
    from_toml = load_config_file(_write(tmp_path / "c.toml", toml.dumps(SECTIONED)), "sdxl")
    from_json = load_config_file(_write(tmp_path / "c.json", json.dumps(SECTIONED)), "sdxl")
    assert from_json == from_toml == {
        "pretrained_model_name_or_path": "m.safetensors", "v_parameterization": True, "network_dim": 16,
        "network_alpha": 8.0, "network_args": ["conv_dim=4", "conv_alpha=1"], "lr_warmup_steps": 0.05,
        "max_train_steps": 100, "text_encoder_lr": [1e-5]}
    flat = {k: v for t in SECTIONED.values() if isinstance(t, dict) for k, v in t.items()}
    assert load_config_file(_write(tmp_path / "flat.json", json.dumps(flat)), "sdxl") == from_json


def test_json_null_is_unset_and_errors_are_one_line(tmp_path):
    cfg = _write(tmp_path / "n.json", json.dumps({"seed": None, "network_dim": 4, "sec": {"vae": None}}))
    assert load_config_file(cfg, "sdxl") == {"network_dim": 4}
    with pytest.raises(UserError, match=r"bad.json: invalid JSON: Expecting"):
        load_config_file(_write(tmp_path / "bad.json", "{network_dim: 4}"), "sdxl")
    with pytest.raises(UserError, match="list.json: a JSON config must be an object"):
        load_config_file(_write(tmp_path / "list.json", "[1, 2]"), "sdxl")
    with pytest.raises(UserError, match=r"u.json: unknown key 'netwrok_dim'. Did you mean 'network_dim'\?"):
        load_config_file(_write(tmp_path / "u.json", '{"netwrok_dim": 4}'), "sdxl")
    with pytest.raises(UserError, match=r't.json: network_dim = "x": invalid value'):
        load_config_file(_write(tmp_path / "t.json", '{"network_dim": "x"}'), "sdxl")


def test_json_path_kept_whole_and_toml_suffix_still_appended(tmp_path):
    _write(tmp_path / "run.json", '{"network_dim": 8}')
    opts = parse_options(["--config_file", str(tmp_path / "run.json"), "--seed", "2"], "sdxl")
    assert opts.network.network_dim == 8 and opts.training.seed == 2
    assert opts.training.config_file == str(tmp_path / "run.json")
    with pytest.raises(UserError, match="run.toml: config file not found"):
        parse_options(["--config_file", str(tmp_path / "run")], "sdxl")


def test_output_config_json_round_trip(tmp_path):
    argv = ["--network_dim", "32", "--network_args", "conv_dim=8", "--lr_scheduler", "cosine", "--lr_warmup_steps",
            "0.1", "--seed", "7", "--ema", "--ema_decay", "0.99", "--config_skip", "x"]
    out = str(tmp_path / "out.json")
    assert sdxl_main(argv + ["--output_config", "--config_file", out]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    assert written == {"seed": 7, "lr_scheduler": "cosine", "lr_warmup_steps": 0.1, "network_dim": 32,
                       "network_args": ["conv_dim=8"], "ema": True, "ema_decay": 0.99}
    from_file = parse_options(["--config_file", out, "--config_skip", "x"], "sdxl")
    assert from_file == parse_options(argv + ["--config_file", out], "sdxl")
    assert sdxl_main(["--output_config", "--config_file", out]) == 1  # never overwrites


def test_config_skip_drops_keys_in_every_section(tmp_path, caplog):
    cfg = _write(tmp_path / "c.json", json.dumps(SECTIONED))
    with caplog.at_level(logging.WARNING, logger="sd_train.config_io"):
        values = load_config_file(cfg, "sdxl", skip="network_dim, pretrained_model_name_or_path,nothere")
    assert "network_dim" not in values and "pretrained_model_name_or_path" not in values
    assert values["network_alpha"] == 8.0
    assert [r.getMessage() for r in caplog.records] == [f"--config_skip: nothere not in {cfg}"]
    toml_cfg = _write(tmp_path / "c.toml", "netwrok_dim = 3\nseed = 4\n")  # skipping a bad key avoids its error
    opts = parse_options(["--config_file", toml_cfg, "--config_skip", "netwrok_dim"], "sd")
    assert opts.training.seed == 4 and opts.training.config_skip == "netwrok_dim"
    assert "config_skip" in build_parser("sd").format_help()
