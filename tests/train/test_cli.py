"""sd_train.cli: precedence, config-file flattening and conversion, --output_config, step arithmetic."""

from __future__ import annotations

import logging

import pytest

from library.errors import UserError
from sd_train.cli import build_parser, load_config_file, parse_options, write_output_config
from sd_train.options import TrainOptions
from sd_train.steps import compute_steps


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_precedence_cli_over_file_over_default(tmp_path):
    cfg = _write(tmp_path / "c.toml", "network_dim = 8\nnetwork_alpha = 4\nshuffle_caption = true\n")
    opts = parse_options(["--config_file", cfg, "--network_dim", "32"], "sdxl")
    assert opts.network.network_dim == 32          # command line wins
    assert opts.network.network_alpha == 4.0       # file wins over the default 1
    assert opts.dataset.shuffle_caption is True    # a flag true in the file stays true
    assert opts.training.max_train_steps == 1600   # default


def test_default_never_overrides_file_value(tmp_path):
    cfg = _write(tmp_path / "c.toml", "max_train_steps = 10\nlearning_rate = 1e-4\n")
    opts = parse_options(["--config_file", cfg, "--seed", "1"], "sd")
    assert opts.training.max_train_steps == 10
    assert opts.optimizer.learning_rate == 1e-4


def test_toml_suffix_appended_and_stored_without_extension(tmp_path):
    _write(tmp_path / "run.toml", "network_dim = 8\n")
    opts = parse_options(["--config_file", str(tmp_path / "run")], "sdxl")
    assert opts.network.network_dim == 8
    assert opts.training.config_file == str(tmp_path / "run")


def test_missing_config_file_exit_1(tmp_path):
    with pytest.raises(UserError) as err:
        parse_options(["--config_file", str(tmp_path / "nope")], "sdxl")
    assert err.value.exit_code == 1
    assert "nope.toml" in str(err.value)


def test_flattening_tables_with_duplicate_warning(tmp_path, caplog):
    cfg = _write(tmp_path / "c.toml", (
        "network_dim = 4\n[model_arguments]\npretrained_model_name_or_path = 'm.safetensors'\n"
        "[additional_network]\nnetwork_dim = 16\n[training_arguments]\nnetwork_dim = 32\n"))
    with caplog.at_level(logging.WARNING, logger="sd_train.config_file"):
        values = load_config_file(cfg, "sdxl")
    assert values["network_dim"] == 32
    assert values["pretrained_model_name_or_path"] == "m.safetensors"
    messages = [r.getMessage() for r in caplog.records]
    assert f"{cfg}: key 'network_dim' of {cfg} is overridden by {cfg} [additional_network]" in messages
    assert (f"{cfg}: key 'network_dim' of {cfg} [additional_network] is overridden by "
            f"{cfg} [training_arguments]") in messages


def test_nested_table_is_a_type_error(tmp_path):
    cfg = _write(tmp_path / "c.toml", "[a]\n[a.network_args]\nx = 1\n")
    with pytest.raises(UserError, match=r"\[a\]: network_args: a table inside a table"):
        load_config_file(cfg, "sdxl")


def test_unknown_key_hint_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "config.toml", "[training_arguments]\nnetwrok_dim = 32\n")
    with pytest.raises(UserError) as err:
        parse_options(["--config_file", "config.toml"], "sdxl")
    assert str(err.value) == "config.toml [training_arguments]: unknown key 'netwrok_dim'. Did you mean 'network_dim'?"
    assert err.value.exit_code == 2


def test_unknown_key_several_hints_and_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "a.toml", "caption_extention2 = '.txt'\n")
    with pytest.raises(UserError) as err:
        load_config_file("a.toml", "sdxl")
    assert str(err.value) == ("a.toml: unknown key 'caption_extention2'. "
                              "Did you mean 'caption_extention' or 'caption_extension'?")
    _write(tmp_path / "b.toml", "zzzzqqq = 3\n")
    with pytest.raises(UserError, match=r"^b.toml: unknown key 'zzzzqqq'\. See train_network.py --help"):
        load_config_file("b.toml", "sd")


@pytest.mark.parametrize("key, advice", [
    ("epoch", "delete it; max_train_epochs / max_train_steps set the run length"),
    ("noise_offset_type", "delete it; noise_offset or multires_noise_iterations choose the noise"),
    ("loraplus_lr_ratio", 'move it into network_args, e.g. network_args = ["loraplus_lr_ratio=16"]'),
    ("train_inpainting", "delete it; sd-scripts has no such option"),
])
def test_kohya_ss_gui_keys_are_named_and_ignored_as_in_kohya(tmp_path, key, advice, caplog):
    cfg = _write(tmp_path / "gui.toml", f"network_dim = 8\n{key} = 8\n")
    with caplog.at_level(logging.WARNING, logger="sd_train.config_file"):
        assert load_config_file(cfg, "sdxl") == {"network_dim": 8}
    assert caplog.messages == [f"{cfg}: {key} = 8 is a kohya_ss GUI setting, not a training option; ignored (as "
                               f"kohya does): {advice}"]


def test_sdxl_only_key_for_sd_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "c.toml", "cache_text_encoder_outputs = true\n")
    with pytest.raises(UserError) as err:
        load_config_file("c.toml", "sd")
    assert str(err.value) == "c.toml: key 'cache_text_encoder_outputs' is only valid for sdxl_train_network.py"
    assert load_config_file("c.toml", "sdxl") == {"cache_text_encoder_outputs": True}


@pytest.mark.parametrize("line, key, expected", [
    ("network_dim = 8", "network_dim", 8),
    ("network_dim = '8'", "network_dim", 8),
    ("max_train_epochs = 10.0", "max_train_epochs", 10),
    ("network_alpha = 16", "network_alpha", 16.0),
    ("learning_rate = '1e-4'", "learning_rate", 1e-4),
    ("output_name = 'x'", "output_name", "x"),
    ("cache_latents = true", "cache_latents", True),
    ("network_args = ['conv_dim=4', 'conv_alpha=1']", "network_args", ["conv_dim=4", "conv_alpha=1"]),
    ("network_args = 'conv_dim=4'", "network_args", ["conv_dim=4"]),
    ("text_encoder_lr = 1e-5", "text_encoder_lr", [1e-5]),
    ("base_weights_multiplier = [1, '0.5']", "base_weights_multiplier", [1.0, 0.5]),
    ("mixed_precision = 'bf16'", "mixed_precision", "bf16"),
    ("lr_warmup_steps = 100", "lr_warmup_steps", 100),
    ("lr_warmup_steps = 0.1", "lr_warmup_steps", 0.1),
    ("lr_warmup_steps = '5%'", "lr_warmup_steps", 0.05),
    ("lr_decay_steps = '20'", "lr_decay_steps", 20),
    ("max_token_length = 75", "max_token_length", 75),  # the kohya_ss GUI writes 75 (= the default)
    ("dynamo_backend = 'no'", "dynamo_backend", "no"),  # ... and "no" (compilation off)
])
def test_type_conversion_accepts(tmp_path, line, key, expected):
    cfg = _write(tmp_path / "c.toml", line + "\n")
    value = load_config_file(cfg, "sdxl")[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("line, fragment", [
    ("network_dim = 8.5", "expected an integer"),
    ("network_dim = 'eight'", "invalid value"),
    ("network_dim = true", "expected an integer"),
    ("network_alpha = 'x'", "invalid value"),
    ("output_name = 3", "expected a string"),
    ("cache_latents = 'true'", "expected true or false"),
    ("lr_warmup_steps = 1.5", "invalid value"),
    ("resolution = '512,512,3'", "invalid value"),
])
def test_type_conversion_rejects(tmp_path, line, fragment):
    cfg = _write(tmp_path / "c.toml", line + "\n")
    with pytest.raises(UserError, match=fragment) as err:
        load_config_file(cfg, "sdxl")
    assert err.value.exit_code == 2


def test_cli_values_and_abbreviation():
    opts = parse_options(["--network_train_unet", "--resolution", "1024,768", "--text_encoder_lr", "1e-4", "5e-5",
                          "--lr_warmup_steps", "5%", "--lr_scheduler", "cosine", "--optimizer_args"], "sdxl")
    assert opts.network.network_train_unet_only is True
    assert opts.dataset.resolution == "1024,768"
    assert opts.optimizer.text_encoder_lr == [1e-4, 5e-5]
    assert opts.optimizer.lr_warmup_steps == 0.05
    assert opts.optimizer.optimizer_args == []


@pytest.mark.parametrize("argv, fragment", [
    (["--netwrok_dim", "3"], "unrecognized arguments"),
    (["--network_dim", "x"], "invalid int value"),
    (["--resolution", "abc"], "argument --resolution"),
    (["--lr_warmup_steps", "1.5"], "argument --lr_warmup_steps"),
    (["--mixed_precision", "fp8"], "invalid choice"),
])
def test_cli_usage_errors_are_user_errors(argv, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        parse_options(argv, "sdxl")
    assert err.value.exit_code == 2


def test_sdxl_only_flag_rejected_by_sd_parser():
    with pytest.raises(UserError, match="unrecognized arguments: --cache_text_encoder_outputs"):
        parse_options(["--cache_text_encoder_outputs"], "sd")


def test_output_config_round_trip(tmp_path):
    out = str(tmp_path / "out")
    argv = ["--pretrained_model_name_or_path", "sd_xl_base_1.0.safetensors", "--resolution", "1024,1024",
            "--network_module", "networks.lora", "--network_dim", "32", "--network_args", "conv_dim=8",
            "conv_alpha=1", "--optimizer_args", "weight_decay=0.01", "--wandb_api_key", "secret",
            "--huggingface_token", "tok", "--lr_warmup_steps", "0.1", "--lr_scheduler", "cosine"]
    opts = parse_options(argv + ["--output_config", "--config_file", out], "sdxl")
    path = write_output_config(opts, opts.training.config_file, build_parser("sdxl"))
    text = open(path, encoding="utf-8").read()
    assert text.splitlines() == [
        'pretrained_model_name_or_path = "sd_xl_base_1.0.safetensors"', 'resolution = "1024,1024"',
        'optimizer_args = [ "weight_decay=0.01",]', 'lr_scheduler = "cosine"', "lr_warmup_steps = 0.1",
        'network_module = "networks.lora"', "network_dim = 32", 'network_args = [ "conv_dim=8", "conv_alpha=1",]']
    reread = parse_options(["--config_file", out], "sdxl")
    expected = parse_options(argv, "sdxl")
    assert reread.replace(config_file=None, wandb_api_key="secret", huggingface_token="tok") == expected
    with pytest.raises(UserError) as err:
        write_output_config(opts, out, build_parser("sdxl"))
    assert err.value.exit_code == 1


def test_output_config_needs_config_file():
    with pytest.raises(UserError, match="--output_config needs --config_file"):
        parse_options(["--output_config", "--seed", "1"], "sd")


def test_output_config_accepts_namespace(tmp_path):
    ns = TrainOptions().replace(seed=3, output_config=True, config_file="x").namespace()
    path = write_output_config(ns, str(tmp_path / "o.toml"), build_parser("sd"))
    assert open(path).read() == "seed = 3\n"


@pytest.mark.parametrize("p, a, steps, epochs, expected", [
    (1, 2, 1600, 10, (260, 26, 10)),
    (1, 2, 100, None, (100, 26, 4)),
    (2, 2, 1600, 10, (130, 13, 10)),
    (1, 1, 1600, None, (1600, 51, 32)),
])
def test_compute_steps_worked_examples(p, a, steps, epochs, expected):
    batches = -(-150 // 4) + -(-50 // 4)
    assert batches == 51
    assert compute_steps(batches, p, a, steps, epochs) == expected


@pytest.mark.parametrize("entry", ["sd", "sdxl"])
def test_help_renders_every_option(entry):
    text = build_parser(entry).format_help()
    assert "--lr_warmup_steps" in text and "'N%'" in text


def test_unsupported_features_are_refused_not_ignored():
    with pytest.raises(UserError, match="^--dataset_class is not supported by sd-train; use --dataset_config"):
        parse_options(["--pretrained_model_name_or_path", "m.safetensors", "--dataset_class", "x.Y"], "sdxl")


@pytest.mark.parametrize("flag", ["--initial_step=3", "--initial_epoch=2", "--skip_until_initial_step",
                                  "--validation_split=0.2", "--validate_every_n_steps=2"])
def test_implemented_resume_and_validation_flags_parse_silently(flag, caplog):
    with caplog.at_level(logging.WARNING):
        options = parse_options(["--pretrained_model_name_or_path", "m.safetensors", flag], "sdxl")
    name = flag[2:].partition("=")[0]
    assert getattr(options.training, name) not in (None, False, 0.0)
    assert "not implemented" not in caplog.text
