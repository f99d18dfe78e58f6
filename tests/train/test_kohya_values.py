"""Values that kohya's --config_file path lets past argparse (issue #18, classes 1, 2 and 4).

kohya's ``read_config_from_file`` puts TOML values into its namespace untouched; what ``false`` / ``""``
then do depends on the code that reads each option (``if not args.resume:`` vs ``if args.vae is not
None:``), and values outside ``choices`` are never checked. The expected outcomes below were read from
kohya-ss/sd-scripts (train_network.py, library/train_util.py, config_util.py, strategy_*.py, utils.py).
"""

from __future__ import annotations

import logging

import pytest

from library.errors import UserError
from sd_train.cli import parse_options
from sd_train.kohya_values import READINGS, max_token_chunks
from sd_train.options import option_fields

UNSET_BOTH = [
    "tokenizer_cache_dir", "conditioning_data_dir", "lr_scheduler_type", "save_precision", "resume",
    "wandb_run_name", "wandb_api_key", "console_log_file", "sample_prompts", "sample_sampler",
    "huggingface_repo_id", "huggingface_repo_type", "huggingface_path_in_repo", "huggingface_token",
    "huggingface_repo_visibility", "offload_optimizer_device", "offload_optimizer_nvme_path",
    "offload_param_device", "offload_param_nvme_path", "token_abstraction", "initializer_concept", "embedding_weights",
    "config_skip",
    "fallback_output_dir",
]
EMPTY_UNSET_FALSE_REFUSED = ["secondary_separator", "caption_prefix", "caption_suffix"]
EMPTY_KEPT_FALSE_REFUSED = ["caption_extension", "caption_extention", "keep_tokens_separator", "optimizer_type"] + [
    f"metadata_{n}" for n in ("title", "author", "description", "license", "tags", "usage_hint", "thumbnail",
                              "merged_from", "trigger_phrase", "preprocessor", "is_negative_embedding")]
REFUSED_BOTH = [
    "pretrained_model_name_or_path", "vae", "mixed_precision", "dataset_config", "dataset_class", "resolution",
    "resize_interpolation", "face_crop_aug_range", "loss_type", "lr_scheduler", "network_module",
    "network_weights", "output_dir", "logging_dir", "log_with", "console_log_level", "ema_save_as",
]
# option -> (context in which kohya never reads it, context in which it does)
CONDITIONAL = {
    "dynamo_backend": ("", "torch_compile = true"),
    "train_data_dir": ('dataset_config = "d.toml"', ""),
    "reg_data_dir": ('dataset_config = "d.toml"', ""),
    "in_json": ('dataset_config = "d.toml"', ""),
    "huber_schedule": ("", 'loss_type = "huber"'),
    "log_tracker_config": ("", 'logging_dir = "logs"'),
}


def _parse(tmp_path, text, *argv, entry="sdxl"):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text, encoding="utf-8")
    return str(cfg), parse_options(["--config_file", str(cfg), *argv], entry)


def _refused(tmp_path, line, context=""):
    with pytest.raises(UserError) as err:
        _parse(tmp_path, f"{context}\n[section]\n{line}\n")
    assert err.value.exit_code == 2
    return str(err.value)


def _default(name):
    return next(f.default for _, f in option_fields("sdxl") if f.name == name)


def test_every_string_option_has_a_kohya_reading():
    strings = {f.name for _, f in option_fields("sdxl") if not f.metadata["flag"] and not f.metadata["nargs"]
               and getattr(f.metadata["type"], "__name__", "str") in ("str", "resolution_type", "float_pair")}
    assert strings - {"config_file"} <= set(READINGS)
    listed = UNSET_BOTH + EMPTY_UNSET_FALSE_REFUSED + EMPTY_KEPT_FALSE_REFUSED + REFUSED_BOTH + list(CONDITIONAL)
    rest = {"config_file", "caption_separator", "output_name", "save_model_as", "training_comment", "log_prefix",
            "log_tracker_name"}
    assert sorted(strings) == sorted(set(listed) | rest) and len(listed) == len(set(listed))


@pytest.mark.parametrize("spelling", ["false", '""'])
@pytest.mark.parametrize("name", UNSET_BOTH)
def test_false_and_empty_mean_unset(tmp_path, name, spelling):
    _, opts = _parse(tmp_path, f"[any_section]\n{name} = {spelling}\n")
    assert opts.flat()[name] == _default(name)


@pytest.mark.parametrize("name", EMPTY_UNSET_FALSE_REFUSED)
def test_empty_unset_false_refused(tmp_path, name):
    _, opts = _parse(tmp_path, f'{name} = ""\n')
    assert opts.flat()[name] is None
    assert f"[section]: {name} = false: kohya uses this as a value, not as unset, and fails; remove the key" in \
        _refused(tmp_path, f"{name} = false")


@pytest.mark.parametrize("name", EMPTY_KEPT_FALSE_REFUSED)
def test_empty_kept_false_refused(tmp_path, name):
    _, opts = _parse(tmp_path, f'{name} = ""\n')
    assert opts.flat()[name] == ""
    assert f"[section]: {name} = false: kohya uses this as a value, not as unset, and fails; " in \
        _refused(tmp_path, f"{name} = false")


@pytest.mark.parametrize("spelling", ["false", '""'])
@pytest.mark.parametrize("name", REFUSED_BOTH)
def test_refused_with_key_value_and_fix(tmp_path, name, spelling):
    message = _refused(tmp_path, f"{name} = {spelling}")
    assert f"c.toml [section]: {name} = {spelling}: kohya uses this as a value, not as unset, and fails; " in message
    assert message.split("fails; ")[1] == READINGS[name].fix and "\n" not in message


@pytest.mark.parametrize("spelling", ["false", '""'])
@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_refused_only_where_kohya_reads_the_option(tmp_path, name, spelling):
    unread, read = CONDITIONAL[name]
    _, opts = _parse(tmp_path, f"{unread}\n{name} = {spelling}\n")
    assert opts.flat()[name] == _default(name)
    assert f"{name} = {spelling}: kohya uses this as a value" in _refused(tmp_path, f"{name} = {spelling}", read)


def test_vae_empty_names_key_value_and_fix_on_both_paths(tmp_path):
    assert _refused(tmp_path, 'vae = ""', "[model_arguments]").endswith(
        'c.toml [section]: vae = "": kohya uses this as a value, not as unset, and fails; remove the key to use '
        "the checkpoint's own VAE, or give a VAE file, diffusers folder or hub id")
    with pytest.raises(UserError) as err:
        parse_options(["--vae", ""], "sdxl")
    assert str(err.value) == ('--vae "": kohya uses this as a value, not as unset, and fails; drop --vae to use the '
                              "checkpoint's own VAE, or give a VAE file, diffusers folder or hub id")


def test_logging_names_unset_without_logging_refused_with_it(tmp_path):
    _, opts = _parse(tmp_path, 'log_prefix = ""\nlog_tracker_name = false\n')
    assert (opts.logging.log_prefix, opts.logging.log_tracker_name) == (None, None)
    assert "log_tracker_name = false: kohya uses" in _refused(tmp_path, "log_tracker_name = false",
                                                              'logging_dir = "logs"')
    _, opts = _parse(tmp_path, 'logging_dir = "logs"\nlog_prefix = ""\n')
    assert opts.logging.log_prefix is None


@pytest.mark.parametrize("line, name, used, warning", [
    ('output_name = ""', "output_name", None, "kohya would name the files '.safetensors'"),
    ("output_name = false", "output_name", None, "'False.safetensors'; using the default names"),
    ('save_model_as = ""', "save_model_as", "safetensors", "saving .safetensors"),
    ('caption_separator = ""', "caption_separator", ",", 'kohya cannot split tags at an empty separator; using ","'),
])
def test_odd_values_kohya_runs_with_use_the_default_with_a_warning(tmp_path, caplog, line, name, used, warning):
    with caplog.at_level(logging.WARNING):
        cfg, opts = _parse(tmp_path, line + "\n")
    assert opts.flat()[name] == used
    assert any(m.startswith(f"{cfg}: {line}: ") and warning in m for m in caplog.messages)


def test_training_comment_empty_kept_false_unset(tmp_path):
    assert _parse(tmp_path, 'training_comment = ""\n')[1].saving.training_comment == ""
    assert _parse(tmp_path, "training_comment = false\n")[1].saving.training_comment is None


def test_caption_extention_empty_overrides_like_kohya(tmp_path):
    """kohya: ``if args.caption_extention is not None: args.caption_extension = args.caption_extention``."""
    _, opts = _parse(tmp_path, 'caption_extension = ".txt"\ncaption_extention = ""\n')
    assert opts.dataset.caption_extension == ""


def test_command_line_empty_string_read_the_same(tmp_path):
    opts = parse_options(["--resume", "", "--caption_prefix", "", "--optimizer_type", ""], "sdxl")
    assert (opts.saving.resume, opts.dataset.caption_prefix, opts.optimizer.optimizer_type) == (None, None, "")
    with pytest.raises(UserError, match='^--network_module "": kohya uses this as a value'):
        parse_options(["--network_module", ""], "sdxl")


def test_command_line_wins_over_a_refused_file_value(tmp_path):
    _, opts = _parse(tmp_path, 'vae = ""\n', "--vae", "v.safetensors")
    assert opts.model.vae == "v.safetensors"


# --- flags and lists written the way generators write them --------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("persistent_data_loader_workers = 1", True),  # the kohya_ss GUI writes int(checkbox)
    ("persistent_data_loader_workers = 0", False),
    ('persistent_data_loader_workers = ""', False),
    ("persistent_data_loader_workers = true", True),
])
def test_flags_take_kohya_truth_values(tmp_path, line, expected):
    assert _parse(tmp_path, line + "\n")[1].dataset.persistent_data_loader_workers is expected


def test_flag_as_string_is_refused_with_the_reason(tmp_path):
    message = _refused(tmp_path, 'xformers = "false"')
    assert message.endswith('[section]: xformers = "false": expected true or false; write it without quotes '
                            '(kohya would read every non-empty string, even "false", as true)')


def test_lists_empty_string_is_empty_false_is_refused(tmp_path):
    _, opts = _parse(tmp_path, 'network_args = ""\noptimizer_args = []\nlr_scheduler_args = ""\n')
    assert (opts.network.network_args, opts.optimizer.optimizer_args, opts.optimizer.lr_scheduler_args) == ([], [], [])
    assert _refused(tmp_path, "network_args = false").endswith(
        "[section]: network_args = false: expected a list; remove the key or write network_args = []")


@pytest.mark.parametrize("line, expected", [("resolution = 512", "512"), ("resolution = [1024, 768]", "1024,768"),
                                            ('resolution = "640,512"', "640,512")])
def test_resolution_as_in_a_dataset_toml(tmp_path, line, expected):
    assert _parse(tmp_path, line + "\n")[1].dataset.resolution == expected


@pytest.mark.parametrize("line, message", [
    ("seed = false", "seed = false: expected an integer; fix the value or remove the key"),
    ('network_dim = ""', 'network_dim = "": expected an integer; fix the value or remove the key'),
    ('learning_rate = ""', 'learning_rate = "": expected a number; fix the value or remove the key'),
])
def test_numbers_false_or_empty_are_refused(tmp_path, line, message):
    assert message in _refused(tmp_path, line)


# --- class 4: values outside argparse's choices ---------------------------------------------------------------

@pytest.mark.parametrize("value, chunks", [(75, 1), (76, 1), (128, 1), (149, 1), (150, 2), (224, 2), (225, 3),
                                           (226, 3), (300, 4)])
def test_max_token_chunks_follow_kohyas_arithmetic(value, chunks):
    """kohya: ``range(1, max_length - 77 + 2, 75)`` chunks of the ``max_token_length + 2`` padded ids."""
    assert max_token_chunks(value) == chunks == len(range(1, max(value + 2 - 77 + 2, 2), 75))


def test_max_token_length_128_is_used_like_75(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg, opts = _parse(tmp_path, "[training_arguments]\nmax_token_length = 128\n")
    assert opts.model.max_token_length == 128  # ss_max_token_length records 128, as kohya writes it
    assert f"{cfg} [training_arguments]: max_token_length = 128: not one of 75, 150, 225; captions use 75 tokens " \
           "(1 chunk(s) of 75), as in kohya" in caplog.messages


def test_max_token_length_128_tokenizes_like_75():
    from sd_train.families.sdxl import SdxlFamily

    caption = ", ".join(f"tag{i}" for i in range(60))  # well over 75 tokens
    short, odd = SdxlFamily(max_token_length=None), SdxlFamily(max_token_length=128)
    for a, b in zip(short.tokenize([caption]), odd.tokenize([caption])):
        assert a.shape == b.shape == (1, 1, 77) and bool((a == b).all())
    assert [t.shape for t in SdxlFamily(max_token_length=300).tokenize([caption])] == [(1, 4, 77)] * 2


@pytest.mark.parametrize("line, name, used, why", [
    ('dynamo_backend = "nvfuser"', "dynamo_backend", "nvfuser", "ignored: torch_compile is not set"),
    ('save_precision = "fp32"', "save_precision", None, "saving in the training dtype"),
    ('save_model_as = "SafeTensors"', "save_model_as", "safetensors", "saving as .safetensors"),
    ('sample_sampler = "Euler a"', "sample_sampler", "ddim", "kohya samples with ddim"),
    ('sample_sampler = "ddpm"', "sample_sampler", "ddim", "sd-train has no ddpm sampler"),
    ('console_log_level = "warn"', "console_log_level", "WARNING", "using WARNING"),
    ('resize_interpolation = "box"', "resize_interpolation", "box", "using box"),
    ('log_with = "mlflow"', "log_with", "mlflow", "passed to accelerate"),
    ('huber_schedule = "linear"', "huber_schedule", "linear", "ignored: loss_type is 'l2'"),
    ("zero_stage = 5", "zero_stage", 5, "ignored without DeepSpeed"),
])
def test_values_outside_choices_kohya_runs_with(tmp_path, caplog, line, name, used, why):
    with caplog.at_level(logging.WARNING):
        cfg, opts = _parse(tmp_path, line + "\n")
    assert opts.flat()[name] == used
    assert any(m.startswith(f"{cfg}: {line}: not one of ") and why in m for m in caplog.messages)


@pytest.mark.parametrize("line, context", [
    ("max_token_length = 50", ""),  # kohya's text encoding reshapes to 77 and fails
    ('mixed_precision = "fp8"', ""),
    ('loss_type = "mse"', ""),
    ('huber_schedule = "linear"', 'loss_type = "huber"'),
    ('dynamo_backend = "nvfuser"', "torch_compile = true"),
    ('save_model_as = "diffusers"', ""),
    ('console_log_level = "verbose"', ""),
    ('log_with = "neptune"', ""),
])
def test_values_outside_choices_kohya_fails_on(tmp_path, line, context):
    message = _refused(tmp_path, line, context)
    assert f"c.toml [section]: {line}: not one of " in message
    assert message.endswith(", and kohya fails on it too; use one of them or remove the key")


def test_command_line_keeps_argparse_choices():
    with pytest.raises(UserError, match="invalid choice"):
        parse_options(["--max_token_length", "128"], "sdxl")


@pytest.mark.parametrize("line, name, expected", [
    ("validation_split = 0", "validation_split", 0.0),  # kohya's argparse_schema wants a float: fails there
    ('keep_tokens = "1"', "keep_tokens", 1),  # ... an int: fails there
    ("caption_dropout_rate = 0", "caption_dropout_rate", 0.0),  # Any(float, int): fine in both
])
def test_dataset_fallbacks_in_the_training_file_are_converted(tmp_path, line, name, expected):
    """kohya validates the argparse namespace with its dataset schema before using it as the fallback of every
    dataset TOML; sd-train converts the value with the flag's type instead."""
    value = _parse(tmp_path, line + "\n")[1].flat()[name]
    assert value == expected and type(value) is type(expected)


def test_docs_table_names_every_option_and_existing_tests():
    """docs/CONFIG_VALUES.md §2 lists every string option; every test it cites exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "CONFIG_VALUES.md").read_text(encoding="utf-8")
    section = doc.split("## 2.")[1].split("## 3.")[0]
    for name in READINGS:
        star = next((p + "*" for p in ("huggingface_", "offload_", "metadata_") if name.startswith(p)), name)
        assert f"`{star}`" in section, name
    for path, test in re.findall(r"`([\w/]*test_\w+\.py)::(test_\w+)", doc):
        files = list(root.glob(f"tests/**/{Path(path).name}"))
        assert files and f"def {test}(" in files[0].read_text(encoding="utf-8"), f"{path}::{test}"


def test_empty_vae_stops_the_entry_point_before_anything_loads(tmp_path, capsys):
    """Issue #18 class 2: was ".: no .safetensors VAE weights in this folder" after the base model loaded."""
    from sd_train.sdxl_train_network import main

    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model_arguments]\npretrained_model_name_or_path = "{tmp_path}/missing.safetensors"\nvae = ""\n'
                   f'[training_arguments]\noutput_dir = "{tmp_path}/out"\n', encoding="utf-8")
    assert main(["--config_file", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'error: {cfg} [model_arguments]: vae = "": kohya uses this as a value, not as unset, and fails; '
                   "remove the key to use the checkpoint's own VAE, or give a VAE file, diffusers folder or hub id"]
    assert not (tmp_path / "out").exists()


def test_ratio_option_type_error_says_what_it_takes(tmp_path):
    assert _refused(tmp_path, "lr_warmup_steps = true").endswith(
        'lr_warmup_steps = true: expected a step count, a fraction below 1 or "N%"; fix the value or remove the key')
