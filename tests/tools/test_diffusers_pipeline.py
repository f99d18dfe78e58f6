"""The diffusers bridge: a pipeline built from tiny sd-train models renders, and kohya LoRA files written
by ``networks.lora`` load through ``pipe.load_lora_weights`` and give sd-train's outputs (FORMAT.md §12)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from library.checkpoint.io import load_models
from library.models.sdxl_unet import size_embedding
from library.text.tokenizer import ClipTokenizer
from library.checkpoint.pipelines import build_diffusers_pipeline

METADATA = {"sdxl": {"ss_base_model_version": "sdxl_base_v1-0"}, "sd15": {"ss_base_model_version": "sd_v1"}}
PREFIXES = {"sdxl": ("lora_te1_text_model_", "lora_te2_text_model_", "lora_unet_input_blocks_",
                     "lora_unet_middle_block_", "lora_unet_output_blocks_"),
            "sd15": ("lora_te_text_model_", "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")}


@pytest.fixture(autouse=True)
def _quiet_hub_loaders():
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _render(pipe) -> np.ndarray:
    out = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images


def _lora(models, arch: str, path, conv: bool):
    """Apply a rank-4 networks.lora network (LoCon with ``conv``) with random non-zero weights; save it."""
    import networks.lora as lora

    tes = models.text_encoders if arch == "sdxl" else models.text_encoders[0]
    args = {"conv_dim": "4", "conv_alpha": "2"} if conv else {}
    net = lora.create_network(1.0, 4, 2.0, models.vae, tes, models.unet, **args)
    net.apply_to(tes, models.unet, True, True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    net.save_weights(str(path), None, {**METADATA[arch], "ss_network_module": "networks.lora"})
    keys = list(net.state_dict())
    assert all(k.startswith(PREFIXES[arch]) for k in keys)
    assert all(any(k.startswith(p) for k in keys) for p in PREFIXES[arch])
    assert any(net.state_dict()[k].dim() == 4 and net.state_dict()[k].shape[-1] == 3 for k in keys) == conv
    return net


def _unet_outputs(arch, ours, theirs):
    gen = torch.Generator().manual_seed(2)
    ctx_dim = 64 if arch == "sdxl" else 32
    x, ctx = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 77, ctx_dim, generator=gen)
    t = torch.tensor([700])
    with torch.no_grad():
        if arch == "sdxl":
            pooled, ids = torch.randn(1, 32, generator=gen), torch.tensor([[64.0, 64, 0, 0, 64, 64]])
            y = torch.cat([pooled, size_embedding(ids, ours.config.size_embed_dim)], dim=1)
            added = {"text_embeds": pooled, "time_ids": ids}
            return ours(x, t, ctx, y), theirs(x, t, ctx, added_cond_kwargs=added).sample
        return ours(x, t, encoder_hidden_states=ctx).sample, theirs(x, t, encoder_hidden_states=ctx).sample


def _check_text_encoders(arch, models, pipe, before=None) -> list[torch.Tensor]:
    """Compare sd-train's and the pipeline's text encoders; returns the pipeline's ``hidden_states[-2]``."""
    texts = ["a cat", "a dog on a sofa"]
    pairs = [(models.text_encoders[0], pipe.text_encoder, ClipTokenizer.clip_l())]
    if arch == "sdxl":
        pairs.append((models.text_encoders[1], pipe.text_encoder_2, ClipTokenizer.openclip()))
    got = []
    for i, (ours, theirs, tok) in enumerate(pairs):
        ids = tok.tokenize(texts)
        with torch.no_grad():
            a, b = ours(ids, output_hidden_states=True), theirs(ids, output_hidden_states=True)
        torch.testing.assert_close(b.hidden_states[-2], a.hidden_states[-2], atol=1e-4, rtol=1e-4)
        if a.text_embeds is not None:
            torch.testing.assert_close(b.text_embeds, a.text_embeds, atol=1e-4, rtol=1e-4)
        if before is not None:  # the LoRA reached this text encoder in diffusers
            assert (b.hidden_states[-2] - before[i]).abs().max() > 1e-2
        got.append(b.hidden_states[-2])
    return got


@pytest.mark.parametrize("arch, conv", [("sdxl", False), ("sd15", False), ("sdxl", True)])
def test_lora_loads_in_diffusers_and_matches(arch, conv, tiny_ckpt, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    models = load_models(tiny_ckpt(arch))
    pipe = build_diffusers_pipeline(models, tmp_path)
    assert isinstance(pipe, StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline)
    base_image = _render(pipe)
    assert base_image.shape == (1, 64, 64, 3) and np.isfinite(base_image).all()
    before = _unet_outputs(arch, models.unet, pipe.unet)
    torch.testing.assert_close(before[1], before[0], atol=1e-5, rtol=1e-4)
    te_before = _check_text_encoders(arch, models, pipe)

    path = tmp_path / "lora.safetensors"
    net = _lora(models, arch, path, conv)
    pipe.load_lora_weights(str(path))  # diffusers raises on any key it cannot map
    ours, theirs = _unet_outputs(arch, models.unet, pipe.unet)
    assert (ours - before[0]).abs().max() > 1e-2  # the LoRA changes the output well above the tolerance
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    _check_text_encoders(arch, models, pipe, te_before)
    lora_image = _render(pipe)
    assert np.isfinite(lora_image).all() and not np.array_equal(lora_image, base_image)
    net.restore()


def test_pipeline_folder_is_reused(tiny_ckpt, tmp_path):
    models = load_models(tiny_ckpt("sd15"))
    build_diffusers_pipeline(models, tmp_path)
    stamp = (tmp_path / "diffusers_sd1" / "model_index.json").stat().st_mtime_ns
    pipe = build_diffusers_pipeline(models, tmp_path)
    assert (tmp_path / "diffusers_sd1" / "model_index.json").stat().st_mtime_ns == stamp
    assert pipe.safety_checker is None
