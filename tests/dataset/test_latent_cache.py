"""Latent and text-encoder caches with a tiny diffusers AutoencoderKL (DATASET.md §10)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from library.dataset import (
    BucketBatchDataset, CliDefaults, build_plan, cache_latents, cache_text_encoder_outputs,
    prepare,
)
from library.dataset.latent_cache import latent_npz_path
from library.errors import UserError


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 8, 8), norm_num_groups=4).eval()


class Counting:
    """encode_fn wrapper that counts the images it encodes."""

    def __init__(self, vae):
        self.vae, self.images, self.shapes = vae, 0, []

    def __call__(self, images):
        self.images += images.shape[0]
        self.shapes.append(tuple(images.shape))
        return self.vae.encode(images).latent_dist.sample()


def _dataset(tmp_path, make_folder, write_toml, subset_extra="", sizes=None):
    make_folder("img", sizes or [(64, 64), (96, 64), (64, 64)], captions=["a, b"] * 3)
    path = write_toml(f"""
[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128
  [[datasets.subsets]]
  image_dir = "{tmp_path}/img"
  caption_extension = ".txt"
  {subset_extra}
""")
    data = prepare(build_plan(CliDefaults(dataset_config=path)), seed=0, bucket_step_multiple=64,
                   is_sdxl=False)
    return BucketBatchDataset(data.train, dataset_seed=0)


def test_disk_cache_written_reused_and_invalidated(tmp_path, make_folder, write_toml, vae):
    ds = _dataset(tmp_path, make_folder, write_toml, "flip_aug = true")
    enc = Counting(vae)
    assert cache_latents(ds, enc, batch_size=2, to_disk=True, family_tag="sd",
                         progress=False) == 3
    assert enc.images == 6  # + flipped copies
    assert enc.shapes == [(2, 3, 64, 64)] * 2 + [(1, 3, 64, 64)] * 2  # vae_batch_size, per bucket
    npz = latent_npz_path(str(tmp_path / "img" / "img01.png"), (96, 64), "sd")
    assert npz.endswith("img01_0096x0064_sd.npz")
    with np.load(npz) as f:
        assert f["latents"].shape == (4, 8, 8) and f["latents_flipped"].shape == (4, 8, 8)
        assert f["original_size"].tolist() == [96, 64] and f["crop_ltrb"].shape == (4,)
    b = ds[0]
    assert b["images"] is None and b["latents"].shape[1:] == (4, 8, 8)

    again = _dataset(tmp_path, make_folder, write_toml, "flip_aug = true")
    enc2 = Counting(vae)
    assert cache_latents(again, enc2, batch_size=2, to_disk=True, family_tag="sd",
                         progress=False) == 0
    assert enc2.images == 0  # encode fn not called
    torch.testing.assert_close(again[0]["latents"], ds[0]["latents"])

    enc3 = Counting(vae)  # another VAE -> re-encode everything
    assert cache_latents(again, enc3, batch_size=2, to_disk=True, family_tag="sd",
                         vae_fingerprint="other-vae", progress=False) == 3


def test_cache_invalidated_when_bucket_changes(tmp_path, make_folder, write_toml, vae):
    ds = _dataset(tmp_path, make_folder, write_toml)
    cache_latents(ds, Counting(vae), batch_size=4, to_disk=True, family_tag="sd", progress=False)
    rec = ds.datasets[0].records[1]
    rec.bucket, rec.resized = (128, 64), (128, 85)  # e.g. another resolution or bucket setting
    enc = Counting(vae)
    assert cache_latents(ds, enc, batch_size=4, to_disk=True, family_tag="sd",
                         progress=False) == 1
    assert cache_latents(ds, enc, batch_size=4, to_disk=True, family_tag="sd", skip_check=True,
                         progress=False) == 0


def test_in_memory_cache_and_scale(tmp_path, make_folder, write_toml, vae):
    ds = _dataset(tmp_path, make_folder, write_toml)
    cache_latents(ds, Counting(vae), batch_size=1, to_disk=False, family_tag="sd", progress=False)
    assert not any(n.endswith(".npz") for n in os.listdir(tmp_path / "img"))
    raw = ds[0]["latents"]
    ds.latent_scale = 0.18215
    torch.testing.assert_close(ds[0]["latents"], raw * 0.18215)


def test_nan_latent_is_an_error(tmp_path, make_folder, write_toml):
    ds = _dataset(tmp_path, make_folder, write_toml)
    with pytest.raises(UserError, match=r"img00\.png: the VAE produced NaN/Inf latents; use "
                                        "--no_half_vae"):
        cache_latents(ds, lambda x: torch.full((x.shape[0], 4, 8, 8), float("nan")),
                      batch_size=1, to_disk=True, family_tag="sd", progress=False)
    assert not any(n.endswith(".npz") for n in os.listdir(tmp_path / "img"))


def test_random_crop_cannot_be_cached(tmp_path, make_folder, write_toml):
    ds = _dataset(tmp_path, make_folder, write_toml, "random_crop = true")
    with pytest.raises(UserError, match="random_crop cannot be combined with latent caching"):
        cache_latents(ds, None, batch_size=1, to_disk=True, progress=False)


def _te(captions):
    n = len(captions)
    return torch.ones(n, 77, 8), torch.ones(n, 77, 16) * 2, torch.arange(n * 4.0).view(n, 4)


def test_te_outputs_cache(tmp_path, make_folder, write_toml):
    ds = _dataset(tmp_path, make_folder, write_toml)
    assert cache_text_encoder_outputs(ds, _te, batch_size=2, to_disk=True, progress=False) == 3
    with np.load(str(tmp_path / "img" / "img00_te_outputs.npz")) as f:
        assert f["hidden_state1"].shape == (77, 8) and f["pool2"].shape == (4,)
    b = ds[0]
    h1, h2, pool = b["text_encoder_outputs"]
    assert h1.shape == (len(b["captions"]), 77, 8) and h2.shape[-1] == 16
    again = _dataset(tmp_path, make_folder, write_toml)
    assert cache_text_encoder_outputs(again, _te, batch_size=2, to_disk=True,
                                      progress=False) == 0


def test_te_cache_refuses_caption_randomness(tmp_path, make_folder, write_toml):
    ds = _dataset(tmp_path, make_folder, write_toml, "shuffle_caption = true")
    with pytest.raises(UserError, match="would freeze the caption randomness of shuffle_caption"):
        cache_text_encoder_outputs(ds, _te, batch_size=2, to_disk=True, progress=False)
    assert not any(n.endswith(".npz") for n in os.listdir(tmp_path / "img"))


def test_flip_without_flipped_latents_and_legacy_name(tmp_path, make_folder, write_toml, vae):
    ds = _dataset(tmp_path, make_folder, write_toml, "flip_aug = true")
    cache_latents(ds, Counting(vae), batch_size=2, to_disk=True, family_tag="sd",
                  flip_aug_aware=False, progress=False)
    for i in range(len(ds)):
        assert ds[i]["latents"].shape[1:] == (4, 8, 8)  # never a missing flipped latent
    for rec in ds.datasets[0].records:  # kohya's old {stem}.npz name is still read
        os.replace(rec.npz_path, os.path.splitext(rec.path)[0] + ".npz")
    again = _dataset(tmp_path, make_folder, write_toml)
    assert cache_latents(again, Counting(vae), batch_size=2, to_disk=True, family_tag="sd",
                         progress=False) == 0
    assert again.datasets[0].records[0].npz_path.endswith("img00.npz")
