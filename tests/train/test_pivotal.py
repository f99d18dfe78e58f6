"""Pivotal tuning end to end on the tiny SDXL (sdxl_train_network.py --train_text_encoder_ti): new token ids,
only the new rows train, the fraction stops them at its step, files beside every save, bit-exact resume,
continuation from a LoRA + _emb pair, placeholder sample prompts, and diffusers loading LoRA + embedding."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from library.checkpoint.io import load_models
from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main

STEPS, STOP = 4, 3  # --train_text_encoder_ti_frac 0.75 of 4 steps: the rows train in steps 1-3


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--output_name", "piv", "--network_module", "networks.lora", "--network_dim", "4",
            "--max_train_steps", str(STEPS), "--max_data_loader_n_workers", "0", "--seed", "3",
            "--learning_rate", "1e-2", "--train_text_encoder_ti", "--token_abstraction", "sks",
            "--train_text_encoder_ti_frac", "0.75", *extra]


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """One pivotal run through the Trainer (kept for inspection): saves every step with states, norm clipping,
    and a placeholder sample prompt at the last step."""
    import sd_train.sampling as sampling
    from sd_train.cli import parse_options
    from sd_train.families.base import family_kwargs
    from sd_train.families.sdxl import SdxlFamily
    from sd_train.trainer import Trainer

    out = tmp_path_factory.mktemp("pivotal")
    prompts = out / "prompts.txt"
    prompts.write_text("a photo of sks --w 64 --h 64 --s 1 --d 1\n")
    argv = _args(assets, out, "--save_every_n_steps", "1", "--save_state", "--ti_norm_clip", "0.5", "--sample_prompts", str(prompts), "--sample_every_n_steps", str(STEPS))
    seen, generate = [], sampling.generate
    sampling.generate = lambda family, models, p, *a: seen.append(p.prompt) or generate(family, models, p, *a)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    options = parse_options(argv, "sdxl")
    trainer = Trainer(options, SdxlFamily(**family_kwargs(options)))
    try:
        assert trainer.setup()
        initial = [te.get_input_embeddings().added.detach().clone() for te in trainer.models.text_encoders]
        trainer.train()
    finally:
        trainer.cleanup()
        sampling.generate = generate
        torch.use_deterministic_algorithms(deterministic)
    return SimpleNamespace(out=out, argv=argv, trainer=trainer, initial=initial, prompts=seen)


def test_new_tokens_get_ids_after_the_vocabulary(run):
    for tok in run.trainer.family.tokenizers():
        assert tok.added_tokens == {"<s0>": 49408, "<s1>": 49409}
        assert tok.encode("sks shape")[1:-1] != tok.encode("<s0><s1> shape")[1:-1]
    assert run.trainer.dataset.caption_rewrite.replace("sks shape, a red circle") == "<s0><s1> shape, a red circle"


def test_only_the_new_rows_train(run, assets):
    base = load_models(assets[0]).text_encoders
    for ours, theirs, start in zip(run.trainer.models.text_encoders, base, run.initial):
        table = ours.get_input_embeddings()
        assert torch.equal(table.weight, theirs.get_input_embeddings().weight)  # every other row: bit-identical
        assert table.added.shape == (2, 32) and not torch.equal(table.added.detach(), start)
    trained = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert not trained & {id(te.get_input_embeddings().weight) for te in run.trainer.models.text_encoders}
    assert run.trainer.lr_descriptions[-1] == "embeddings"


def test_fraction_stops_the_rows_exactly_at_its_step(run):
    names = [f"piv-step{s:08d}" for s in range(1, STEPS)] + ["piv"]
    emb = [load_file(run.out / f"{n}_emb.safetensors")[0] for n in names]
    lora = [load_file(run.out / f"{n}.safetensors")[0] for n in names]
    for a, b in zip(emb, emb[1:STOP]):  # steps 1 -> 2 -> 3 move the rows
        assert not torch.equal(a["clip_l"], b["clip_l"]) and not torch.equal(a["clip_g"], b["clip_g"])
    for later in emb[STOP:]:  # step 4 does not
        assert all(torch.equal(later[k], emb[STOP - 1][k]) for k in ("clip_l", "clip_g"))
    key = next(k for k in lora[0] if k.startswith("lora_unet") and k.endswith("lora_up.weight"))
    assert not torch.equal(lora[-1][key], lora[-2][key])  # the LoRA keeps training


def test_files_layouts_and_metadata(run):
    emb, meta = load_file(run.out / "piv_emb.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    assert json.loads(meta["ss_token_abstraction"]) == {"sks": ["<s0>", "<s1>"]}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    lora, lmeta = load_file(run.out / "piv.safetensors")
    assert {k.split("_")[1] for k in lora} == {"te1", "te2", "unet"}  # no bundle_emb keys unless asked
    assert (lmeta["ss_token_abstraction"], lmeta["ss_num_new_tokens_per_abstraction"], lmeta["ss_ti_init"],
            lmeta["ss_train_text_encoder_ti"], lmeta["ss_ti_lr"]) == (
        '{"sks": ["<s0>", "<s1>"]}', "2", "random", "True", "0.01")


def test_norm_clip_bounds_every_row(run):
    from library.embeddings.rows import mean_row_norm

    emb, _ = load_file(run.out / "piv_emb.safetensors")
    for te, key in zip(run.trainer.models.text_encoders, ("clip_l", "clip_g")):
        limit = 0.5 * mean_row_norm(te.get_input_embeddings().weight)
        norms = emb[key].norm(dim=1)
        assert bool((norms <= limit * (1 + 1e-5)).all()) and bool((norms >= limit * 0.999).any())


def test_sample_prompts_use_the_tokens(run):
    assert run.prompts == ["a photo of <s0><s1>"]
    assert len(list((run.out / "sample").glob("piv_000004_00_*.png"))) == 1


def test_resume_is_bit_exact_with_the_embeddings_in_the_state(run, assets, tmp_path):
    state = run.out / "piv-step00000002-state"
    assert {k: tuple(v.shape) for k, v in load_file(state / "embeddings.safetensors")[0].items()} == {
        "rows.0": (2, 32), "rows.1": (2, 32)}
    torch.use_deterministic_algorithms(True)
    try:
        assert sdxl_main(_args(assets, tmp_path, "--save_every_n_steps", "1", "--save_state", "--ti_norm_clip", "0.5",
                               "--resume", str(state))) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    for name in ("piv.safetensors", "piv_emb.safetensors", "piv-step00000003_emb.safetensors"):
        a, b = load_file(run.out / name)[0], load_file(tmp_path / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_continuation_from_lora_and_emb_with_frozen_tokens_and_bundle(run, assets, tmp_path, capsys):
    """``--network_weights piv.safetensors`` picks up ``piv_emb.safetensors``; without
    ``--train_text_encoder_ti`` the placeholder keeps its trained tokens unchanged while the LoRA (UNet only)
    trains on; ``--bundle_embeddings`` puts the rows into the LoRA as A1111's ``bundle_emb`` keys."""
    from library.io.safetensors_io import data_section_sha256

    args = [a for a in _args(assets, tmp_path, "--network_weights", str(run.out / "piv.safetensors"),
                             "--network_train_unet_only", "--max_train_steps", "1", "--bundle_embeddings")
            if a != "--train_text_encoder_ti"]
    assert sdxl_main(args) == 0
    before, (after, _) = load_file(run.out / "piv_emb.safetensors")[0], load_file(tmp_path / "piv_emb.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert f"new tokens start from {run.out / 'piv_emb.safetensors'}" in capsys.readouterr().err
    lora, meta = load_file(tmp_path / "piv.safetensors")
    assert meta["ss_ti_init"] == "file:piv_emb.safetensors" and meta["ss_train_text_encoder_ti"] == "False"
    assert {k for k in lora if not k.startswith("lora_unet_")} == {"bundle_emb.sks.clip_l", "bundle_emb.sks.clip_g"}
    assert torch.equal(lora["bundle_emb.sks.clip_l"], before["clip_l"])
    assert torch.equal(lora["bundle_emb.sks.clip_g"], before["clip_g"])
    assert meta["sshs_model_hash"] == data_section_sha256(tmp_path / "piv.safetensors")  # rehashed with the bundle


def test_text_encoder_output_cache_is_refused_before_models_load(assets, tmp_path, capsys):
    code = sdxl_main(_args(assets, tmp_path / "o", "--cache_text_encoder_outputs", "--network_train_unet_only"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--cache_text_encoder_outputs cannot be used with new tokens" in err[0]
    assert not (tmp_path / "o").exists()


def test_diffusers_loads_lora_and_embedding_together(run, assets, tmp_path):
    """The model card recipe of diffusers' advanced script: LoRA, then the rows once per text encoder; the
    pipeline's prompt states for ``<s0><s1>`` equal sd-train's, and the placeholder prompt renders."""
    from library.checkpoint.pipelines import build_diffusers_pipeline
    from library.embeddings.rows import add_rows
    from library.text.tokenizer import ClipTokenizer

    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    models = load_models(assets[0])
    pipe = build_diffusers_pipeline(models, tmp_path)
    emb, _ = load_file(run.out / "piv_emb.safetensors")
    tokens = ["<s0>", "<s1>"]
    pipe.load_textual_inversion(emb["clip_l"], token=tokens, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    prompt = "a photo of <s0><s1> shape"
    pairs = [(pipe.text_encoder, pipe.tokenizer, ClipTokenizer.clip_l(), "clip_l"),
             (pipe.text_encoder_2, pipe.tokenizer_2, ClipTokenizer.openclip(), "clip_g")]
    for te, (theirs, hf_tok, tok, key) in zip(models.text_encoders, pairs):
        ids = hf_tok.convert_tokens_to_ids(tokens)
        assert ids == tok.add_tokens(tokens) == [49408, 49409]
        assert torch.equal(theirs.get_input_embeddings().weight[ids].detach(), emb[key])
        add_rows(te, emb[key])
        hf_ids = hf_tok(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert hf_ids.tolist() == tok.tokenize([prompt]).tolist()
        with torch.no_grad():
            a, b = te(hf_ids, output_hidden_states=True), theirs(hf_ids, output_hidden_states=True)
        torch.testing.assert_close(b.hidden_states[-2], a.hidden_states[-2], atol=1e-4, rtol=1e-4)
    from library.embeddings.files import bundle_keys
    from safetensors.torch import save_file

    lora, _ = load_file(run.out / "piv.safetensors")
    save_file({**lora, **bundle_keys("sks", [emb["clip_l"], emb["clip_g"]])}, str(tmp_path / "bundled.safetensors"))
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):  # why --bundle_embeddings is off by default
        pipe.load_lora_weights(str(tmp_path / "bundled.safetensors"))
    pipe.load_lora_weights(str(run.out / "piv.safetensors"))

    def render(text):
        return pipe(text, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    image, plain = render(prompt), render("a photo of shape")
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and not np.array_equal(image, plain)


def test_worked_example_config_trains(assets, tmp_path):
    """examples/pivotal_sdxl.toml through --config_file, with the tiny model, data and one step on the command
    line (command line > config file): the LoRA and its _emb file are written."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "pivotal_sdxl.toml"
    ckpt, toml = assets
    assert sdxl_main(["--config_file", str(example), "--pretrained_model_name_or_path", str(ckpt),
                      "--dataset_config", str(toml), "--output_dir", str(tmp_path), "--max_train_steps", "1",
                      "--mixed_precision", "no", "--token_abstraction", "sks", "--sample_every_n_steps", "0",
                      "--max_data_loader_n_workers", "0"]) == 0
    emb, meta = load_file(tmp_path / "tok_woman_emb.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    assert meta["ss_token_abstraction"] == '{"sks": ["<s0>", "<s1>"]}'
    assert load_file(tmp_path / "tok_woman.safetensors")[1]["ss_ti_init"] == "mean"  # "woman" is one token for two rows
