"""Option dataclasses, value parsers and the cross-flag rules of CLI.md §5.12."""

from __future__ import annotations

import argparse

import pytest

from library.errors import UserError
from sd_train.compat import check_unsupported
from sd_train.options import TrainOptions, option_fields
from sd_train.options.base import int_or_ratio, parse_resolution, resolve_step_count
from sd_train.options.rules import normalize, rule_messages, validate


def test_namespace_is_flat_with_kohya_names():
    ns = TrainOptions().replace(network_dim=8, network_args=["conv_dim=4"]).namespace()
    assert isinstance(ns, argparse.Namespace)
    assert ns.network_dim == 8 and ns.network_args == ["conv_dim=4"]
    assert ns.network_alpha == 1 and ns.caption_extension == ".caption" and ns.max_train_steps == 1600
    # kohya's 196 SDXL flags + ours (sd-train additions) + kohya's 6 textual-inversion flags
    assert len(vars(ns)) == 196 + len({f.name for _, f in option_fields() if f.metadata["ours"]}) + 6


def test_options_are_frozen_and_unknown_names_rejected():
    opts = TrainOptions()
    with pytest.raises(Exception):
        opts.network.network_dim = 3
    with pytest.raises(KeyError, match="netwrok_dim"):
        TrainOptions.from_flat({"netwrok_dim": 3})


@pytest.mark.parametrize("given, expected", [
    ("100", 100), ("0", 0), ("0.05", 0.05), ("5%", 0.05), (12, 12), (0.25, 0.25), (3.0, 3), ("3.0", 3)])
def test_int_or_ratio(given, expected):
    value = int_or_ratio(given)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("bad", ["1.5", 1.5, "-1", "100%", "abc", True])
def test_int_or_ratio_rejects(bad):
    with pytest.raises(ValueError):
        int_or_ratio(bad)


def test_resolve_step_count():
    assert resolve_step_count(0.05, 260) == 13
    assert resolve_step_count(7, 260) == 7
    assert resolve_step_count(None, 260) == 0


@pytest.mark.parametrize("text, expected", [("512", (512, 512)), ("1024,768", (1024, 768)), (None, None)])
def test_parse_resolution(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("bad", ["", "a", "512,", "1,2,3", "0", "-5"])
def test_parse_resolution_rejects(bad):
    with pytest.raises(ValueError):
        parse_resolution(bad)


def _validate(entry="sdxl", **changes):
    values = TrainOptions().flat()
    values.update(changes)
    notes = normalize(values, entry)
    return notes + validate(TrainOptions.from_flat(values), entry)


ERRORS = [
    (dict(cache_latents=True, color_aug=True), "--cache_latents cannot be used with --color_aug"),
    (dict(cache_latents_to_disk=True, random_crop=True), "--cache_latents cannot be used with --random_crop"),
    (dict(adaptive_noise_scale=0.1), "--adaptive_noise_scale requires --noise_offset"),
    (dict(scale_v_pred_loss_like_noise_pred=True), "requires --v_parameterization"),
    (dict(v_pred_like_loss=0.1, v_parameterization=True),
     "--v_pred_like_loss cannot be used with --v_parameterization"),
    (dict(cache_text_encoder_outputs=True), "--cache_text_encoder_outputs requires --network_train_unet_only"),
    (dict(cache_text_encoder_outputs_to_disk=True), "--cache_text_encoder_outputs requires --network_train_unet_only"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, shuffle_caption=True), "--shuffle_caption"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, caption_dropout_rate=0.1),
     "--caption_dropout_rate"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, caption_tag_dropout_rate=0.1),
     "--caption_tag_dropout_rate"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, token_warmup_step=10), "--token_warmup_step"),
    (dict(full_fp16=True, mixed_precision="bf16"), "--full_fp16 requires --mixed_precision fp16"),
    (dict(full_bf16=True), "--full_bf16 requires --mixed_precision bf16"),
    (dict(network_train_unet_only=True, network_train_text_encoder_only=True),
     "--network_train_unet_only and --network_train_text_encoder_only"),
    (dict(lr_warmup_steps=10), "--lr_scheduler constant cannot use --lr_warmup_steps"),
    (dict(initial_step=1600), "--initial_step must be less than --max_train_steps"),
    (dict(initial_epoch=5, max_train_epochs=4), "--initial_epoch must not exceed --max_train_epochs"),
    (dict(v2=True), "--v2 is for SD 2.x models"),
    (dict(max_nan_steps=0), "--max_nan_steps must be at least 1"),
    (dict(network_dim=0), "--network_dim must be at least 1"),
    (dict(train_batch_size=0), "--train_batch_size must be at least 1"),
    (dict(gradient_accumulation_steps=0), "--gradient_accumulation_steps must be at least 1"),
    (dict(learning_rate=-1.0), "--learning_rate, --unet_lr and --text_encoder_lr must not be negative"),
    (dict(text_encoder_lr=[1e-4, -1e-5]), "--learning_rate, --unet_lr and --text_encoder_lr must not be negative"),
    (dict(max_grad_norm=-1.0), "--max_grad_norm must not be negative"),
    (dict(network_dropout=2.0), "--network_dropout must be between 0 and 1"),
    (dict(min_timestep=500, max_timestep=100), "--min_timestep / --max_timestep must satisfy"),
    (dict(max_timestep=1001), "--min_timestep / --max_timestep must satisfy"),
    (dict(min_timestep=1000), "--min_timestep / --max_timestep must satisfy"),
    (dict(torch_compile=True, dynamo_backend="no"), "--torch_compile with --dynamo_backend no compiles nothing"),
    (dict(base_weights=["a"], base_weights_multiplier=[1.0, 2.0]), "--base_weights_multiplier"),
    (dict(use_8bit_adam=True, optimizer_type="Lion"), "--use_8bit_adam and --optimizer_type Lion"),
    (dict(ema=True, ema_decay=1.5), "--ema_decay must be between 0 and 1"),
    (dict(ema=True, ema_update_every=0), "--ema_update_every must be at least 1"),
    (dict(stop_text_encoder_training=5, train_text_encoder_frac=0.5), "are both set; keep one"),
    (dict(stop_text_encoder_training=-1), "--stop_text_encoder_training must be at least 1 (to train no text"),
    (dict(train_text_encoder_frac=0.0), "--train_text_encoder_frac must be in (0, 1]"),
    (dict(train_text_encoder_frac=1.5), "--train_text_encoder_frac must be in (0, 1]"),
    (dict(train_text_encoder_frac=0.5, network_train_text_encoder_only=True), "would leave nothing to train"),
]


@pytest.mark.parametrize("changes, fragment", ERRORS)
def test_error_rules(changes, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        _validate(**changes)


def test_edge_values_that_are_valid():
    assert _validate(min_timestep=500, max_timestep=500, network_dim=1, max_grad_norm=0.0, network_dropout=0.0) == []
    assert _validate(min_timestep=0, max_timestep=1000, learning_rate=0.0, text_encoder_lr=[0.0, 1e-5]) == []
    assert _validate(ema=True, ema_decay=0.0, train_text_encoder_frac=1.0) == []
    assert _validate(ema=True, ema_decay=1.0, stop_text_encoder_training=1) == []


def test_bucket_steps_are_checked_per_dataset_not_as_a_flag():
    """kohya checks the step multiple on each bucketed DreamBooth / fine-tuning dataset (after the dataset TOML
    has overridden the flag), never on the flag itself: tests/dataset/test_prepare.py covers the check."""
    assert _validate("sd", bucket_reso_steps=32) == []
    assert _validate("sdxl", bucket_reso_steps=48) == []


@pytest.mark.parametrize("changes, fragment", [
    (dict(zero_terminal_snr=True), "--zero_terminal_snr"),
    (dict(sample_every_n_steps=0), "--sample_every_n_steps 0 <= 0"),
    (dict(sample_every_n_epochs=-1), "--sample_every_n_epochs -1 <= 0"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, enable_wildcard=True), "--enable_wildcard"),
    (dict(cache_text_encoder_outputs=True, network_train_unet_only=True, caption_dropout_every_n_epochs=2),
     "--caption_dropout_every_n_epochs"),
    (dict(clip_skip=2), "--clip_skip is ignored for SDXL"),
    (dict(full_fp16=True, mixed_precision="fp16"), "--full_fp16 with AdamW: fp16 rounds its eps"),
    (dict(full_fp16=True, mixed_precision="fp16", optimizer_type="adamw"), "prefer --optimizer_type AdamW8bit"),
    (dict(ema_decay=0.99), "--ema_* options have no effect without --ema"),
    (dict(stop_text_encoder_training=5, network_train_unet_only=True), "the text encoder is not trained"),
])
def test_warning_rules(changes, fragment):
    notes = _validate(**changes)
    assert len(notes) == 1 and fragment in notes[0]


def test_full_fp16_with_other_optimizers_does_not_warn():
    assert _validate(full_fp16=True, mixed_precision="fp16", optimizer_type="Lion") == []


def test_every_rule_has_a_test():
    from sd_train.options import pivotal

    own_tests = {m for _, _, m in pivotal.rules()}  # tests/train/test_pivotal_options.py covers these
    messages = [m for _, m in rule_messages() if m not in own_tests]
    fragments = [f for _, f in ERRORS] + [
        "--zero_terminal_snr", "--enable_wildcard", "--caption_dropout_every_n_epochs", "--clip_skip", "multiple of 32",
        "--fp8_base", "--full_fp16 with AdamW", "--ema_* options", "the text encoder is not trained"]
    for message in messages:
        assert any(f in message for f in fragments), message


def test_normalize_aliases_and_implications():
    values = TrainOptions().flat()
    values.update(caption_extention=".txt", use_lion_optimizer=True, cache_latents_to_disk=True,
                  cache_text_encoder_outputs_to_disk=True, sample_every_n_steps=0)
    normalize(values, "sdxl")
    assert values["caption_extension"] == ".txt" and values["optimizer_type"] == "Lion"
    assert values["cache_latents"] is True and values["cache_text_encoder_outputs"] is True
    assert values["sample_every_n_steps"] is None
    values = TrainOptions().flat()
    values["use_8bit_adam"] = True
    normalize(values, "sd")
    assert values["optimizer_type"] == "AdamW8bit"


@pytest.mark.parametrize("changes, fragment", [
    (dict(deepspeed=True), "DeepSpeed is not supported"),
    (dict(huggingface_repo_id="me/x"), "Hugging Face Hub"),
    (dict(resume_from_huggingface=True), "Hugging Face Hub"),
    (dict(dataset_class="pkg.Cls"), "--dataset_class is not supported"),
])
def test_compat_rejects(changes, fragment):
    with pytest.raises(UserError, match=fragment):
        check_unsupported(TrainOptions().replace(**changes).namespace())


def test_compat_ignores_with_warnings():
    ns = TrainOptions().replace(fused_backward_pass=True, cpu_offload_checkpointing=True, zero_stage=3,
                                offload_param_device="cpu", mem_eff_attn=True, highvram=True,
                                ddp_static_graph=True).namespace()
    notes = check_unsupported(ns)
    assert len(notes) == 7
    assert "--highvram has no effect: sd-train never empties the CUDA cache while caching" in notes
    assert "--ddp_static_graph is ignored: sd-train averages the network's gradients itself, no DDP hook runs" in notes
    assert any("--fused_backward_pass is ignored" in n for n in notes)
    assert any("--zero_stage is a DeepSpeed option" in n for n in notes)
    assert check_unsupported(TrainOptions().namespace()) == []
