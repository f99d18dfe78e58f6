"""cache_latents / cache_text_encoder_outputs (TOOLS.md §9): file names, keys, values, reuse."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tools import cache_latents, cache_text_encoder_outputs
from tools.make_sample_dataset import make_sample_dataset

SIZES = [(64, 64), (96, 64), (64, 96), (128, 80), (64, 64), (80, 128), (96, 96), (128, 64)]  # make_sample_dataset


@pytest.fixture
def sample(tmp_path):
    toml = make_sample_dataset(tmp_path / "data")
    return toml, tmp_path / "data" / "10_sks shape"


def _args(ckpt, toml, *extra):
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--seed", "3",
            "--device", "cpu", *extra]


def _mtimes(folder: Path, pattern: str) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))}


def test_cache_latents_names_keys_and_reuse(tiny_ckpt, sample, capsys):
    toml, folder = sample
    ckpt = tiny_ckpt("sdxl")
    assert cache_latents.main(_args(ckpt, toml, "--sdxl", "--vae_batch_size", "2")) == 0
    assert "latents encoded: 8 " in capsys.readouterr().out
    names = sorted(p.name for p in folder.glob("*.npz"))
    assert names == sorted(f"img_{i:02d}_{w:04d}x{h:04d}_sdxl.npz" for i, (w, h) in enumerate(SIZES))
    with np.load(folder / "img_01_0096x0064_sdxl.npz") as z:
        keys = set(z.files)
        suffix = next(k for k in keys if re.fullmatch(r"latents_\d+x\d+", k))[len("latents"):]
        assert keys == {"latents", "latents" + suffix, "original_size", "crop_ltrb", "sd_train_fingerprint" + suffix}
        h, w = (int(x) for x in suffix[1:].split("x"))
        assert z["latents"].shape == (4, h, w) and z["latents"].dtype == np.float32
        assert np.array_equal(z["latents"], z["latents" + suffix]) and z["original_size"].tolist() == [96, 64]
        assert np.isfinite(z["latents"]).all() and np.abs(z["latents"]).max() > 0
    before = _mtimes(folder, "*.npz")
    assert cache_latents.main(_args(ckpt, toml, "--sdxl", "--skip_existing")) == 0  # kohya-compat alias
    assert "latents encoded: 0 " in capsys.readouterr().out
    assert cache_latents.main(_args(ckpt, toml, "--sdxl")) == 0  # full validity check, same options
    assert "latents encoded: 0 " in capsys.readouterr().out
    assert _mtimes(folder, "*.npz") == before


def test_cache_latents_equal_trainer_encoder_path(tiny_ckpt, sample):
    """Same --seed: the files hold exactly what the trainer's in-memory caching computes."""
    from library.checkpoint.io import load_models
    from library.dataset import latent_cache
    from sd_train.families.sdxl import SdxlFamily

    toml, _ = sample
    ckpt = tiny_ckpt("sdxl")
    assert cache_latents.main(_args(ckpt, toml, "--sdxl")) == 0
    args = cache_latents.setup_parser().parse_args(_args(ckpt, toml, "--sdxl"))
    (ds,) = cache_latents.build_datasets(args, *cache_latents.seeds(args))
    encode = SdxlFamily().latent_encoder(load_models(ckpt).vae.eval(), torch.device("cpu"), torch.Generator().manual_seed(3))
    assert latent_cache.cache_latents(ds, encode, batch_size=1, to_disk=False, family_tag="sdxl", progress=False) == 8
    records = [r for d in ds.datasets for r in d.records]
    assert len(records) == 8
    for rec in records:
        with np.load(latent_cache.latent_npz_path(rec.path, rec.size, "sdxl")) as z:
            assert np.array_equal(z["latents"], rec.latents.numpy())


def test_cache_text_encoder_outputs_match_trainer_family(tiny_ckpt, sample, capsys):
    from library.checkpoint.io import load_models
    from sd_train.families.sdxl import SdxlFamily

    toml, folder = sample
    ckpt = tiny_ckpt("sdxl")
    assert cache_text_encoder_outputs.main(_args(ckpt, toml, "--sdxl", "--vae_batch_size", "3")) == 0
    assert "text encoder outputs encoded: 8 " in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("*.npz")) == [f"img_{i:02d}_te_outputs.npz" for i in range(8)]
    models = load_models(ckpt)
    ref = SdxlFamily().cache_outputs(models.text_encoders, [(folder / "img_05.txt").read_text().strip()])
    with np.load(folder / "img_05_te_outputs.npz") as z:
        assert set(z.files) == {"hidden_state1", "hidden_state2", "pool2", "sd_train_caption_sha1"}
        for key, want in zip(("hidden_state1", "hidden_state2", "pool2"), ref):
            assert z[key].shape == tuple(want.shape[1:])
            assert torch.allclose(torch.from_numpy(z[key]), want[0].float(), atol=1e-5)
    before = _mtimes(folder, "*_te_outputs.npz")
    assert cache_text_encoder_outputs.main(_args(ckpt, toml, "--sdxl")) == 0
    assert "text encoder outputs encoded: 0 " in capsys.readouterr().out
    assert _mtimes(folder, "*_te_outputs.npz") == before


def test_long_captions_chunked_like_trainer(tiny_ckpt):
    from library.checkpoint.io import load_models
    from sd_train.families.sdxl import SdxlFamily

    models = load_models(tiny_ckpt("sdxl"))
    caps = [" ".join(["red circle"] * 60), "short"]
    encode = cache_text_encoder_outputs.sdxl_text_encoder(
        models.text_encoders, cache_text_encoder_outputs.sdxl_tokenizers(None), 150)
    got = encode(caps)
    want = SdxlFamily(max_token_length=150).cache_outputs(models.text_encoders, caps)
    assert got[0].shape[:2] == (2, 152) and got[2].shape[0] == 2
    for g, w in zip(got, want):
        assert torch.allclose(g, w.float(), atol=1e-5)


def test_family_errors_are_one_line(tiny_ckpt, sample, capsys):
    toml, folder = sample
    ckpt = tiny_ckpt("sdxl")
    assert cache_text_encoder_outputs.main(_args(ckpt, toml)) == 2
    assert capsys.readouterr().err.strip() == ("error: cache_text_encoder_outputs: text encoder output caches are "
                                               "SDXL only; pass --sdxl with an SDXL checkpoint")
    folders = ["--train_data_dir", str(folder.parent), "--resolution", "64", "--caption_extension", ".txt"]
    assert cache_latents.main(["--pretrained_model_name_or_path", str(ckpt), *folders]) == 2  # SDXL without --sdxl
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SDXL" in err and len(err.strip().splitlines()) == 1
    assert not list(folder.glob("*.npz"))


def test_weighted_captions_encode_like_trainer_and_key_the_cache(tiny_ckpt, sample, capsys):
    from library.checkpoint.io import load_models
    from sd_train.families.sdxl import SdxlFamily

    toml, folder = sample
    ckpt = tiny_ckpt("sdxl")
    models = load_models(ckpt)
    caps = ["a (red:1.5) circle on [blue] ground", "plain words"]
    got = cache_text_encoder_outputs.sdxl_text_encoder(
        models.text_encoders, cache_text_encoder_outputs.sdxl_tokenizers(None), None, weighted=True)(caps)
    want = SdxlFamily(weighted_captions=True).cache_outputs(models.text_encoders, caps)
    plain = SdxlFamily().cache_outputs(models.text_encoders, ["a red circle on blue ground", "plain words"])
    for g, w in zip(got, want):
        assert torch.allclose(g, w.float(), atol=1e-6)
    assert not torch.allclose(got[0][0], plain[0][0].float(), atol=1e-3)  # weights reached TE1's states
    assert torch.allclose(got[2], plain[2].float(), atol=1e-6)  # same tokens; the pooled output is not weighted
    assert torch.allclose(got[1][1], plain[1][1].float(), atol=1e-6)  # no weight syntax: unchanged
    for flags, encoded in ((["--weighted_captions"], 8), ([], 8), ([], 0), (["--weighted_captions"], 8)):
        assert cache_text_encoder_outputs.main(_args(ckpt, toml, "--sdxl", *flags)) == 0
        assert f"text encoder outputs encoded: {encoded} " in capsys.readouterr().out
