"""Tiny checkpoints: make_tiny_model, round trips, dtypes, forward passes, diffusers folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from library.checkpoint.diffusers_folder import sdxl_config_to_diffusers
from library.checkpoint.io import detect_path_family, load_models, save_models
from library.checkpoint.keymaps import ldm_unet_to_diffusers_map
from library.io.safetensors_io import load_file, read_metadata
from tools.make_tiny_model import main as make_tiny_main
from tools.make_tiny_model import make_tiny_checkpoint

ARCH_FIXTURES = [("sd15", "tiny_sd15_ckpt", "sd1"), ("sd2", "tiny_sd2_ckpt", "sd2"), ("sdxl", "tiny_sdxl_ckpt", "sdxl")]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch,fixture,family", ARCH_FIXTURES)
def test_load_save_round_trip_is_identical(request, tmp_path, arch, fixture, family):
    path = request.getfixturevalue(fixture)
    models = load_models(path)
    assert models.family == family
    out = tmp_path / "rt.safetensors"
    save_models(models, out)
    assert _same(load_file(path)[0], load_file(out)[0])
    assert read_metadata(out)["sd_train.model_config"] == read_metadata(path)["sd_train.model_config"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_load_casts_to_dtype(tiny_sdxl_ckpt, dtype):
    models = load_models(tiny_sdxl_ckpt, dtype=dtype)
    for module in (models.unet, models.vae, *models.text_encoders):
        assert {p.dtype for p in module.state_dict().values()} == {dtype}
        assert not any(p.requires_grad for p in module.parameters())
    assert models.extras["conditioner.embedders.1.model.logit_scale"].dtype == torch.float32


def test_sd2_keeps_kohya_placeholders(tiny_sd2_ckpt):
    tensors, _ = load_file(tiny_sd2_ckpt)
    p = "cond_stage_model.model."
    assert torch.equal(tensors[p + "text_projection"], torch.ones(32, 32))
    assert tensors[p + "logit_scale"].item() == 1.0
    assert torch.equal(tensors[p + "transformer.resblocks.3.attn.in_proj_weight"],
                       tensors[p + "transformer.resblocks.2.attn.in_proj_weight"])
    assert len(load_models(tiny_sd2_ckpt).text_encoders[0].text_model.encoder.layers) == 3


def test_same_seed_same_weights_cli(tmp_path, capsys, tiny_sd15_ckpt):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert make_tiny_main(["--arch", "sd15", str(a), "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert make_tiny_checkpoint("sd15", b, seed=3) == b
    assert _same(load_file(a)[0], load_file(b)[0])
    seed0 = load_file(tiny_sd15_ckpt)[0]  # written with seed 0
    assert seed0.keys() == load_file(a)[0].keys() and not _same(load_file(a)[0], seed0)


def test_bad_arch_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        make_tiny_main(["--arch", "sd3", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2
    assert "invalid choice: 'sd3'" in capsys.readouterr().err


def test_forward_passes(tiny_sd15_ckpt, tiny_sdxl_ckpt):
    ids = torch.full((1, 77), 49407)
    ids[0, :3] = torch.tensor([49406, 320, 49407])
    sd = load_models(tiny_sd15_ckpt)
    ctx = sd.text_encoders[0](ids).last_hidden_state
    assert sd.unet(torch.randn(1, 4, 8, 8), torch.tensor([5]), ctx).sample.shape == (1, 4, 8, 8)
    xl = load_models(tiny_sdxl_ckpt)
    h1 = xl.text_encoders[0](ids).last_hidden_state
    out2 = xl.text_encoders[1](ids)
    y = torch.cat([out2.text_embeds, torch.zeros(1, 6 * xl.configs["unet"].size_embed_dim)], dim=1)
    pred = xl.unet(torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.cat([h1, out2.last_hidden_state], -1), y)
    assert pred.shape == (1, 4, 8, 8)
    assert xl.vae.decode(torch.randn(1, 4, 8, 8)).sample.shape == (1, 3, 64, 64)


def _write_diffusers_folder(models, root):
    unet_sd = models.unet.state_dict()
    if models.family == "sdxl":
        mapping = ldm_unet_to_diffusers_map(models.configs["unet"])
        unet_sd = {mapping[k]: v for k, v in unet_sd.items()}
        unet_cfg = sdxl_config_to_diffusers(models.configs["unet"])
    else:
        unet_cfg = models.configs["unet"]
    parts = [("unet", unet_cfg, unet_sd, "diffusion_pytorch_model"),
             ("vae", models.configs["vae"], models.vae.state_dict(), "diffusion_pytorch_model")]
    for i, (te, cfg) in enumerate(zip(models.text_encoders, models.configs["text_encoders"])):
        arch = "CLIPTextModelWithProjection" if cfg.projection_dim else "CLIPTextModel"
        parts.append(("text_encoder" + ("_2" if i else ""), {**cfg.to_dict(), "architectures": [arch]}, te.state_dict(), "model"))
    for sub, cfg, sd, stem in parts:
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps({"_class_name": "x", **cfg}))
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / sub / f"{stem}.safetensors"))
    (root / "model_index.json").write_text("{}")


@pytest.mark.parametrize("fixture", ["tiny_sd15_ckpt", "tiny_sdxl_ckpt"])
def test_diffusers_folder_loads_like_the_single_file(request, tmp_path, fixture):
    path = request.getfixturevalue(fixture)
    models = load_models(path)
    _write_diffusers_folder(models, tmp_path / "pipe")
    folder = load_models(tmp_path / "pipe", dtype=torch.float16)
    assert folder.family == models.family == detect_path_family(tmp_path / "pipe") == detect_path_family(path)
    for a, b in [(models.unet, folder.unet), (models.vae, folder.vae)] + list(zip(models.text_encoders, folder.text_encoders)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k].half(), sb[k]) for k in sa)
    mixed = load_models(tmp_path / "pipe", unet_dtype=torch.bfloat16)
    assert {p.dtype for p in mixed.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in mixed.vae.parameters()} == {torch.float32}


def test_make_sample_dataset_writes_images_captions_and_toml(tmp_path):
    import tomllib

    from PIL import Image

    from tools.make_sample_dataset import main as sample_main

    toml_path = tmp_path / "cfg" / "sample.toml"
    assert sample_main([str(tmp_path / "data"), "--config", str(toml_path)]) == 0
    subset = tmp_path / "data" / "10_sks shape"
    pngs = sorted(subset.glob("*.png"))
    assert len(pngs) == 8
    sizes = {Image.open(p).size for p in pngs}
    assert {(64, 64), (96, 64), (64, 96), (128, 80)} <= sizes
    assert all("sks" in p.with_suffix(".txt").read_text().split(",")[0] for p in pngs)
    cfg = tomllib.loads(toml_path.read_text())
    assert cfg["general"] == {"caption_extension": ".txt"}
    ds = cfg["datasets"][0]
    assert (ds["resolution"], ds["batch_size"], ds["enable_bucket"]) == (64, 2, True)
    assert (ds["min_bucket_reso"], ds["max_bucket_reso"], ds["bucket_reso_steps"]) == (32, 128, 32)
    assert ds["subsets"] == [{"image_dir": subset.as_posix(), "class_tokens": "sks shape", "num_repeats": 10}]


def test_repo_sample_config_is_what_the_tool_writes():
    from pathlib import Path

    from tools.make_sample_dataset import dataset_toml

    repo_toml = Path(__file__).resolve().parents[2] / "dataset_configs" / "sample_sdxl.toml"
    assert repo_toml.read_text() == dataset_toml("sample_data/10_sks shape")
