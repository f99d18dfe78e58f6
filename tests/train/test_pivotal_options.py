"""The new-token options: cross-flag rules (before any model loads), kohya's textual-inversion defaults, and
the one-line refusals of the entry points."""

from __future__ import annotations

import pytest

from library.errors import UserError
from sd_train.cli import parse_options
from sd_train.options import TrainOptions, pivotal
from sd_train.options.rules import normalize, validate


def _validate(entry="sdxl", **changes):
    values = TrainOptions().flat()
    values.update(changes)
    notes = normalize(values, entry)
    return notes + validate(TrainOptions.from_flat(values), entry)


ERRORS = [
    (dict(train_text_encoder_ti=True, cache_text_encoder_outputs=True, network_train_unet_only=True),
     "--cache_text_encoder_outputs cannot be used with new tokens"),
    (dict(num_new_tokens_per_abstraction=0, train_text_encoder_ti=True), "--num_new_tokens_per_abstraction must be"),
    (dict(train_text_encoder_ti=True, train_text_encoder_ti_frac=0.0), "--train_text_encoder_ti_frac must be in"),
    (dict(train_text_encoder_ti=True, ti_lr=-1.0), "--ti_lr must not be negative"),
    (dict(train_text_encoder_ti=True, ti_norm_clip=0.0), "--ti_norm_clip must be positive"),
    (dict(token_abstraction="TOK"), "--token_abstraction without --train_text_encoder_ti"),
    (dict(bundle_embeddings=True), "--bundle_embeddings / --embedding_weights need new tokens"),
]
TI_ERRORS = [
    (dict(), "textual inversion needs --token_string"),
    (dict(token_string="tok", num_vectors_per_token=0), "--num_vectors_per_token must be at least 1"),
    (dict(token_string="tok", use_object_template=True, use_style_template=True),
     "--use_object_template and --use_style_template are both set"),
]


@pytest.mark.parametrize("changes, fragment", ERRORS)
def test_error_rules(changes, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        _validate(**changes)


@pytest.mark.parametrize("changes, fragment", TI_ERRORS)
def test_textual_inversion_error_rules(changes, fragment):
    with pytest.raises(UserError, match=fragment):
        _validate("sd_ti", **changes)


def test_warning_and_every_rule_has_a_test():
    notes = _validate(ti_lr=1e-3)
    assert notes == ["--ti_lr / --initializer_concept are ignored without --train_text_encoder_ti"]
    fragments = [f for _, f in ERRORS + TI_ERRORS] + ["--ti_lr / --initializer_concept"]
    for _, _, message in pivotal.rules():
        assert any(f in message for f in fragments), message


def test_valid_combinations():
    assert _validate(train_text_encoder_ti=True, network_train_unet_only=True, ti_lr=0.0) == []
    assert _validate("sd_ti", token_string="tok", use_style_template=True) == []


def test_missing_embedding_file_names_it(tmp_path):
    missing = tmp_path / "nope_emb.safetensors"
    with pytest.raises(UserError, match=f"{missing}: embedding file not found \\(--embedding_weights\\)"):
        _validate(train_text_encoder_ti=True, embedding_weights=str(missing))
    with pytest.raises(UserError, match="--weights"):
        _validate("sdxl_ti", token_string="tok", weights=str(missing))


def test_frozen_placeholders_accept_the_file_beside_network_weights(tmp_path):
    lora = tmp_path / "run.safetensors"
    with pytest.raises(UserError, match="without --train_text_encoder_ti"):
        _validate(token_abstraction="TOK", network_weights=str(lora))
    (tmp_path / "run_emb.safetensors").write_bytes(b"")
    assert _validate(token_abstraction="TOK", network_weights=str(lora)) == []


def test_textual_inversion_defaults_follow_kohya():
    opts = parse_options(["--token_string", "mytok"], "sd_ti")
    assert opts.saving.output_name == "mytok" and opts.saving.save_model_as == "pt"
    assert opts.network.network_module == pivotal.EMBEDDING_NETWORK
    opts = parse_options(["--token_string", "mytok", "--output_name", "x", "--save_model_as", "safetensors"], "sd_ti")
    assert opts.saving.output_name == "x" and opts.saving.save_model_as == "safetensors"


def test_flags_of_the_other_program_are_refused_in_one_line(capsys):
    from sd_train.sdxl_train_network import main as sdxl_main
    from sd_train.sdxl_train_textual_inversion import main as ti_main

    assert ti_main(["--token_string", "x", "--network_dim", "4"]) == 2
    assert sdxl_main(["--token_string", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "sdxl_train_textual_inversion.py: unrecognized arguments: --network_dim" in err[0]
    assert "sdxl_train_network.py: unrecognized arguments: --token_string" in err[1]
