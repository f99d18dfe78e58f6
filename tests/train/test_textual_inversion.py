"""kohya's textual-inversion entry points end to end on the tiny SD1.5 and SDXL: kohya's flags and file layouts
(``emb_params`` / ``clip_l`` + ``clip_g``, ``.pt`` by default), ``--init_word``, templates, ``--weights`` to
continue, and the files loading through diffusers' ``load_textual_inversion``; and SD1.5 pivotal tuning through
train_network.py (SD's one-encoder embedding layout)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from library.checkpoint.io import load_models
from library.io.safetensors_io import load_file
from library.text.tokenizer import ClipTokenizer
from sd_train.sdxl_train_textual_inversion import main as sdxl_ti_main
from sd_train.train_textual_inversion import main as sd_ti_main


def _args(ckpt, toml, out, *extra):
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "4", "--learning_rate", "1e-2",
            "--token_string", "mytok", *extra]


@pytest.fixture(autouse=True)
def _quiet_hub_loaders():
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """``(tiny SD1.5 checkpoint, a 64-px dataset TOML with 64-pixel bucket steps)``."""
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ti_sd15")
    image_dir = next(p for p in make_sample_dataset(root / "data").parent.iterdir() if p.is_dir())
    toml = root / "plain.toml"
    toml.write_text('[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\nenable_bucket = true\n'
                    'min_bucket_reso = 64\nmax_bucket_reso = 128\n\n[[datasets]]\n[[datasets.subsets]]\n'
                    f'image_dir = "{image_dir.as_posix()}"\n')
    return make_tiny_checkpoint("sd15", root / "sd15.safetensors"), toml


def test_sdxl_kohya_flags_write_a_pt_with_clip_l_and_clip_g(assets, tmp_path):
    """Default ``.pt`` named after the token; ``--init_word`` rows start as its tokens' embeddings (lr 0 keeps
    them); object templates; the file loads into diffusers once per text encoder and renders."""
    from library.checkpoint.pipelines import build_diffusers_pipeline

    ckpt, toml = assets
    assert sdxl_ti_main(_args(ckpt, toml, tmp_path / "zero", "--init_word", "red circle", "--num_vectors_per_token",
                              "3", "--use_object_template", "--learning_rate", "0")) == 0
    data = torch.load(tmp_path / "zero" / "mytok.pt", weights_only=True)
    models = load_models(ckpt)
    ids = ClipTokenizer.clip_l().encode_without_specials("red circle")
    for te, key in zip(models.text_encoders, ("clip_l", "clip_g")):
        assert torch.equal(data[key], te.get_input_embeddings().weight[[ids[0], ids[1], ids[0]]])  # kohya cycles

    out = tmp_path / "trained"
    assert sdxl_ti_main(_args(ckpt, toml, out, "--num_vectors_per_token", "2", "--use_style_template")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mytok.pt", "mytok_dataset_report.json", "mytok_report.html",
                                                     "mytok_run.json"]
    data = torch.load(out / "mytok.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in data.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    pipe = build_diffusers_pipeline(models, tmp_path)
    tokens = ["mytok", "mytok1"]
    pipe.load_textual_inversion(data["clip_l"], token=tokens, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(data["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[[49408, 49409]].detach(), data["clip_g"])
    image = pipe("a painting in the style of mytok mytok1", num_inference_steps=2, height=64, width=64,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sd15_safetensors_loads_in_diffusers_directly_and_continues_with_weights(sd15, tmp_path):
    """``emb_params`` ``[3, 768-wide]`` (32 here); diffusers loads the file path as ``mytok`` (its multi-vector
    ``mytok mytok_1 mytok_2``), giving the same prompt states as sd-train's ``mytok mytok1 mytok2``;
    ``--weights`` starts a new run from it (lr 0: unchanged)."""
    from library.checkpoint.pipelines import build_diffusers_pipeline
    from library.embeddings.rows import add_rows

    ckpt, toml = sd15
    out = tmp_path / "run"
    assert sd_ti_main(_args(ckpt, toml, out, "--num_vectors_per_token", "3", "--save_model_as", "safetensors",
                            "--init_word", "shape")) == 0
    emb, meta = load_file(out / "mytok.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"emb_params": (3, 32)}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["ss_token_abstraction"] == '{"mytok": ["mytok", "mytok1", "mytok2"]}'

    models = load_models(ckpt)
    pipe = build_diffusers_pipeline(models, tmp_path)
    pipe.load_textual_inversion(str(out / "mytok.safetensors"), token="mytok")
    hf_prompt = pipe.maybe_convert_prompt("a photo of mytok", pipe.tokenizer)
    assert hf_prompt == "a photo of mytok mytok_1 mytok_2"
    hf_ids = pipe.tokenizer(hf_prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    tok = ClipTokenizer.clip_l()
    tok.add_tokens(["mytok", "mytok1", "mytok2"])
    assert hf_ids.tolist() == tok.tokenize(["a photo of mytok mytok1 mytok2"]).tolist()
    te = models.text_encoders[0]
    add_rows(te, emb["emb_params"])
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(hf_ids).last_hidden_state, te(hf_ids).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)
    image = pipe("a photo of mytok", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(image).all()

    again = tmp_path / "again"
    assert sd_ti_main(_args(ckpt, toml, again, "--num_vectors_per_token", "3", "--weights",
                            str(out / "mytok.safetensors"), "--learning_rate", "0", "--output_name", "cont")) == 0
    assert torch.equal(torch.load(again / "cont.pt", weights_only=True)["emb_params"], emb["emb_params"])


def test_weights_of_the_wrong_shape_are_one_line(sd15, tmp_path, capsys):
    ckpt, toml = sd15
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(2, 32)}, str(bad))
    assert sd_ti_main(_args(ckpt, toml, tmp_path / "o", "--num_vectors_per_token", "3", "--weights", str(bad))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: holds vectors of shapes [(2, 32)]" in err[0]


def test_a_checkpoint_of_the_other_family_names_the_other_textual_inversion_script(sd15, tmp_path, capsys):
    ckpt, toml = sd15
    assert sdxl_ti_main(_args(ckpt, toml, tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {ckpt}: this checkpoint is SD1.x/SD2.x; use train_textual_inversion.py"
    assert not list((tmp_path / "o").glob("mytok*.pt"))


def test_sd15_pivotal_tuning_in_train_network(sd15, tmp_path):
    """train_network.py --train_text_encoder_ti: SD1's ``_emb`` file holds ``emb_params`` (one text encoder);
    two placeholders get <s0><s1> and <s2><s3>, bundled as A1111's ``string_to_param`` per placeholder."""
    from sd_train.train_network import main as sd_main

    ckpt, toml = sd15
    assert sd_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir",
                    str(tmp_path), "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", "2",
                    "--max_data_loader_n_workers", "0", "--seed", "4", "--learning_rate", "1e-2",
                    "--train_text_encoder_ti", "--token_abstraction", "sks,shape", "--bundle_embeddings",
                    "--initializer_concept", "a shape"]) == 0
    emb, meta = load_file(tmp_path / "last_emb.safetensors")
    assert {k: tuple(v.shape) for k, v in emb.items()} == {"emb_params": (4, 32)}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    lora, lmeta = load_file(tmp_path / "last.safetensors")
    assert torch.equal(lora["bundle_emb.sks.string_to_param.*"], emb["emb_params"][:2])
    assert torch.equal(lora["bundle_emb.shape.string_to_param.*"], emb["emb_params"][2:])
    assert lmeta["ss_token_abstraction"] == '{"sks": ["<s0>", "<s1>"], "shape": ["<s2>", "<s3>"]}'
    assert lmeta["ss_ti_init"] == "per_token" and lmeta["ss_initializer_concept"] == "a shape"
