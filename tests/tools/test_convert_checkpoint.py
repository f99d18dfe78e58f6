"""convert_checkpoint (TOOLS.md §7) and the diffusers-folder export (FORMAT.md §11) on tiny models."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from library.checkpoint import convert as cc
from library.checkpoint.io import load_models
from library.checkpoint.diffusers_export import save_diffusers_folder
from library.errors import UserError
from tools import convert_checkpoint as tool

ARCHS = ("sd15", "sd2", "sdxl")
SDXL_LOGIT_SCALE = "conditioner.embedders.1.model.logit_scale"


@pytest.fixture(autouse=True)
def _quiet_hub_loaders():
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def folders(tiny_ckpt, tmp_path_factory):
    """``{arch: (single file, exported folder)}``, converted once by the CLI."""
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for arch in ARCHS:
        assert tool.main([str(tiny_ckpt(arch)), str(root / arch)]) == 0
        out[arch] = (tiny_ckpt(arch), root / arch)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_exact(arch, folders, tmp_path):
    src, folder = folders[arch]
    back = tmp_path / "back.safetensors"
    assert tool.main([str(folder), str(back)]) == 0
    a, b = load_file(str(src)), load_file(str(back))
    assert set(a) == set(b)
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    if arch == "sdxl":  # documented placeholder: a diffusers folder has no logit_scale
        assert differ == [SDXL_LOGIT_SCALE]
        assert b[SDXL_LOGIT_SCALE].item() == pytest.approx(cc.OPENCLIP_LOGIT_SCALE)
    else:
        assert differ == []


@pytest.mark.parametrize("arch", ARCHS)
def test_folder_layout(arch, folders):
    folder = folders[arch][1]
    index = json.loads((folder / "model_index.json").read_text())
    te_dirs = ["text_encoder", "text_encoder_2"] if arch == "sdxl" else ["text_encoder"]
    for sub in te_dirs:
        assert (folder / sub / "config.json").is_file() and (folder / sub / "model.safetensors").is_file()
    for sub in ("unet", "vae"):
        assert (folder / sub / "diffusion_pytorch_model.safetensors").is_file()
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert sched["prediction_type"] == "epsilon"
    if arch == "sdxl":
        assert index["_class_name"] == "StableDiffusionXLPipeline"
        assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
        assert sched["_class_name"] == "EulerDiscreteScheduler"
        tok2 = json.loads((folder / "tokenizer_2" / "special_tokens_map.json").read_text())
        assert tok2["pad_token"] == "!"
    else:
        assert index["_class_name"] == "StableDiffusionPipeline"
        assert index["safety_checker"] == [None, None] and sched["_class_name"] == "PNDMScheduler"
    assert not any(p.name.endswith(".tmp") for p in folder.parent.iterdir())


@pytest.mark.parametrize("arch", ARCHS)
def test_folder_loads_in_diffusers_and_transformers(arch, folders):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from library.text.tokenizer import ClipTokenizer

    src, folder = folders[arch]
    ours = load_file(str(folder / "text_encoder" / "model.safetensors"))
    for cls, sub in [(UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")]:
        _, info = cls.from_pretrained(str(folder), subfolder=sub, output_loading_info=True)
        assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == ([], [], [])
    te_classes = [(CLIPTextModel, "text_encoder")] + ([(CLIPTextModelWithProjection, "text_encoder_2")]
                                                      if arch == "sdxl" else [])
    for cls, sub in te_classes:
        te, info = cls.from_pretrained(str(folder), subfolder=sub, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    te = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    assert torch.equal(te.state_dict()["embeddings.token_embedding.weight"],
                       ours["text_model.embeddings.token_embedding.weight"])
    pads = {"sd15": [49407], "sd2": [0], "sdxl": [49407, 0]}[arch]
    for sub, pad in zip(["tokenizer", "tokenizer_2"], pads):
        tok = CLIPTokenizer.from_pretrained(str(folder), subfolder=sub)
        ref = ClipTokenizer.clip_l() if pad == 49407 else ClipTokenizer.openclip()
        text = "A photo of a cat, sitting on 2 mats."  # no "!": transformers splits the "!" pad token out
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids[0], ref.tokenize([text])[0]) and tok.pad_token_id == pad


def test_sdxl_unet_matches_diffusers(folders):
    from diffusers import UNet2DConditionModel

    from library.models.sdxl_unet import size_embedding

    src, folder = folders["sdxl"]
    ours = load_models(src).unet
    theirs = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet").eval()
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 64, generator=gen)
    pooled, t = torch.randn(2, 32, generator=gen), torch.tensor([999, 250])
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [96, 128, 8, 16, 64, 64]])
    y = torch.cat([pooled, size_embedding(time_ids, ours.config.size_embed_dim)], dim=1)
    with torch.no_grad():
        a = ours(x, t, ctx, y)
        b = theirs(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    torch.testing.assert_close(b.sample, a, atol=1e-5, rtol=1e-4)
    assert a.abs().mean() > 1e-3


def test_sdxl_text_encoders_match_transformers(folders):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from library.text.tokenizer import ClipTokenizer

    src, folder = folders["sdxl"]
    te1, te2 = load_models(src).text_encoders
    hf1 = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").eval()
    hf2 = CLIPTextModelWithProjection.from_pretrained(str(folder), subfolder="text_encoder_2").eval()
    texts = ["a cat", "a dog on a red sofa, 4k"]
    ids1, ids2 = ClipTokenizer.clip_l().tokenize(texts), ClipTokenizer.openclip().tokenize(texts)
    with torch.no_grad():
        o1, h1 = te1(ids1, output_hidden_states=True), hf1(ids1, output_hidden_states=True)
        o2, h2 = te2(ids2, output_hidden_states=True), hf2(ids2, output_hidden_states=True)
    torch.testing.assert_close(h1.hidden_states[-2], o1.hidden_states[-2])
    torch.testing.assert_close(h1.last_hidden_state, o1.last_hidden_state)
    torch.testing.assert_close(h2.hidden_states[-2], o2.hidden_states[-2])
    # transformers pools at the first eos_token_id (49407 in the written config), as sd-train does;
    # the pad id 0 of tokenizer_2 would make argmax-of-ids pooling pick the EOS too, but 49407 pads would not.
    torch.testing.assert_close(h2.text_embeds, o2.text_embeds)
    eos = (ids2 == 49407).int().argmax(-1)
    torch.testing.assert_close(h2.text_embeds, te2.text_projection(o2.last_hidden_state[torch.arange(2), eos]))


def test_refuses_existing_output_without_overwrite(folders, tmp_path, capsys):
    src = folders["sd15"][0]
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    assert tool.main([str(src), str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    argv = [str(src), str(out), "--overwrite", "--metadata", "title=tiny", "--save_precision_as", "fp16"]
    assert tool.main(argv) == 0
    sd = load_file(str(out))
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    from library.io.safetensors_io import read_metadata

    assert read_metadata(out)["title"] == "tiny"


def test_overwrite_replaces_folder_atomically(folders, tmp_path):
    src = folders["sd15"][0]
    out = tmp_path / "model"
    (out / "junk").mkdir(parents=True)
    assert tool.main([str(src), str(out), "--overwrite", "--variant", "fp16", "--save_precision_as", "fp16"]) == 0
    assert not (out / "junk").exists()
    unet = load_file(str(out / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    assert next(iter(unet.values())).dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(UserError, match="already exists"):
        save_diffusers_folder(load_models(src), out)


def test_ckpt_output_has_epoch_and_step(folders, tmp_path):
    out = tmp_path / "m.ckpt"
    assert tool.main([str(folders["sd15"][1]), str(out), "--epoch", "3", "--global_step", "1200",
                      "--reference_model", "x/y"]) == 0
    obj = torch.load(out, weights_only=True)
    assert (obj["epoch"], obj["global_step"]) == (3, 1200)
    assert set(obj["state_dict"]) == set(load_file(str(folders["sd15"][0])))


@pytest.mark.parametrize("flag, arch, message", [
    ("--v2", "sd15", "this checkpoint is SD1.x (--v1); remove --v2"),
    ("--sdxl", "sd2", "this checkpoint is SD2.x (--v2); remove --sdxl"),
    ("--v1", "sdxl", "this checkpoint is SDXL (--sdxl); remove --v1"),
])
def test_family_flag_mismatch(flag, arch, message, folders, tmp_path, capsys):
    assert tool.main([str(folders[arch][0]), str(tmp_path / "o.safetensors"), flag]) == 2
    assert message in capsys.readouterr().err
    assert tool.main([str(folders[arch][1]), str(tmp_path / "o.safetensors"), flag]) == 2


def test_bad_inputs(folders, tmp_path, capsys):
    assert tool.main([str(tmp_path / "missing.safetensors"), str(tmp_path / "o")]) == 2
    assert "model_to_load not found" in capsys.readouterr().err
    assert tool.main([str(folders["sd15"][0]), str(tmp_path / "o.safetensors"), "--metadata", "novalue"]) == 2
    assert "--metadata 'novalue': expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_v_parameterization_scheduler(folders, tmp_path):
    out = tmp_path / "v"
    assert tool.main([str(folders["sd2"][0]), str(out), "--v2", "--v_parameterization"]) == 0
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["prediction_type"]) == ("DDIMScheduler", "v_prediction")
