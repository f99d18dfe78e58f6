"""SDXL UNet: SGM key layout on the full model (meta device), behaviour of the tiny model on CPU."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from library.errors import UserError
from library.models import sdxl_unet
from library.models.sdxl_unet import (
    CrossAttention,
    SdxlUNet,
    SdxlUNetConfig,
    size_embedding,
    timestep_embedding,
)

ROOT = Path(__file__).resolve().parents[2]
UNET_PREFIX = "model.diffusion_model."
LORA_PARENTS = {"Transformer2DModel"}
LOCON_PARENTS = {"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}


def _spec_file(name: str) -> Path:
    """A golden list from spec/data: a copy in tests/assets, else the shared spec next to the repo."""
    for candidate in (ROOT / "tests" / "assets" / name, ROOT.parent / "shared" / "spec" / "data" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name}: copy it from spec/data into tests/assets/")


def _read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in _spec_file(name).read_text(encoding="utf-8").splitlines():
        key, _dtype, shape = line.split("\t")
        rows[key] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return rows



@pytest.fixture(scope="module")
def full_unet() -> SdxlUNet:
    with torch.device("meta"):
        return SdxlUNet(SdxlUNetConfig.full())


@pytest.fixture()
def tiny_unet() -> SdxlUNet:
    torch.manual_seed(0)
    return SdxlUNet(SdxlUNetConfig.tiny())


def _tiny_inputs(config: SdxlUNetConfig, batch: int = 2, size: int = 8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen)
    t = torch.tensor([10, 900][:batch])
    context = torch.randn(batch, 20, config.context_dim, generator=gen)
    y = torch.randn(batch, config.adm_in_channels, generator=gen)
    return x, t, context, y


def _lora_shapes(unet: torch.nn.Module, parents: set[str], rank: int = 4) -> dict[str, tuple[int, ...]]:
    """kohya networks.lora key names and tensor shapes for ``unet`` (NETWORKS.md §3), from module shapes."""
    shapes = {}
    for parent_path, parent in unet.named_modules():
        if type(parent).__name__ not in parents:
            continue
        for child_path, leaf in parent.named_modules():
            if type(leaf).__name__ not in ("Linear", "Conv2d"):
                continue
            name = f"lora_unet_{parent_path}.{child_path}".replace(".", "_")
            out_f, in_f, *kernel = leaf.weight.shape
            shapes[f"{name}.alpha"] = ()
            shapes[f"{name}.lora_down.weight"] = (rank, in_f, *kernel)
            shapes[f"{name}.lora_up.weight"] = (out_f, rank, *([1, 1] if kernel else []))
    return shapes


def test_full_state_dict_equals_sdxl_base_manifest(full_unet):
    manifest = {
        k[len(UNET_PREFIX):]: v for k, v in _read_tsv("sdxl_base_ldm_keys.tsv").items() if k.startswith(UNET_PREFIX)
    }
    ours = {k: tuple(v.shape) for k, v in full_unet.state_dict().items()}
    assert len(manifest) == 1680
    assert sorted(ours) == sorted(manifest)
    assert {k for k in ours if ours[k] != manifest[k]} == set()
    assert sum(p.numel() for p in full_unet.parameters()) == 2_567_463_684


def test_full_module_counts_match_networks_spec(full_unet):
    classes = Counter(type(m).__name__ for m in full_unet.modules())
    assert classes["Transformer2DModel"] == 11
    assert classes["BasicTransformerBlock"] == 70
    assert classes["ResnetBlock2D"] == 17
    assert classes["Downsample2D"] == 2
    assert classes["Upsample2D"] == 2
    lora = _lora_shapes(full_unet, LORA_PARENTS)
    assert len(lora) // 3 == 722  # 70 blocks x 10 Linear + 11 x (proj_in, proj_out)
    assert len(_lora_shapes(full_unet, LOCON_PARENTS)) // 3 == 788  # + 38 3x3, 11 skip, 17 emb


@pytest.mark.parametrize(
    "golden, parents",
    [("lora_keys_sdxl_unet.tsv", LORA_PARENTS), ("lora_keys_sdxl_conv.tsv", LOCON_PARENTS)],
)
def test_kohya_lora_key_names_and_shapes(full_unet, golden, parents):
    expected = {k: v for k, v in _read_tsv(golden).items() if k.startswith("lora_unet_")}
    assert _lora_shapes(full_unet, parents) == expected


def test_leaves_are_plain_torch_classes(full_unet):
    modules = dict(full_unet.named_modules())
    assert type(modules["input_blocks.4.1.transformer_blocks.0.attn1.to_q"]) is torch.nn.Linear
    assert type(modules["middle_block.1.transformer_blocks.9.ff.net.2"]) is torch.nn.Linear
    assert type(modules["output_blocks.5.1.proj_out"]) is torch.nn.Linear
    assert type(modules["input_blocks.1.0.in_layers.2"]) is torch.nn.Conv2d
    assert type(modules["input_blocks.3.0.op"]) is torch.nn.Conv2d
    assert type(modules["output_blocks.2.2.conv"]) is torch.nn.Conv2d
    assert type(modules["out.0"]) is torch.nn.GroupNorm
    assert type(modules["input_blocks.4.1.transformer_blocks.0.norm1"]) is torch.nn.LayerNorm
    assert modules["input_blocks.4.1.transformer_blocks.0.attn1.to_q"].bias is None
    assert modules["input_blocks.4.1.transformer_blocks.0.attn1.to_out.0"].bias is not None
    assert type(modules["input_blocks.3.0"]).__name__ == "Downsample2D"
    assert type(modules["output_blocks.5.2"]).__name__ == "Upsample2D"
    assert type(modules["middle_block.0"]).__name__ == "ResnetBlock2D"


def _structure(unet: SdxlUNet) -> set[tuple[str, str]]:
    """(path with transformer-block indices normalised, class name) for every module."""
    return {(re.sub(r"transformer_blocks\.\d+", "transformer_blocks.N", p), type(m).__name__)
            for p, m in unet.named_modules()}


def test_tiny_has_full_module_structure(full_unet, tiny_unet):
    assert _structure(tiny_unet) == _structure(full_unet)
    first_blocks = [p for p in dict(full_unet.named_modules()) if p.endswith("transformer_blocks.0")]
    assert len(first_blocks) == 11
    for block in first_blocks:
        tiny_paths = {p for p, _ in tiny_unet.get_submodule(block).named_modules()}
        full_paths = {p for p, _ in full_unet.get_submodule(block).named_modules()}
        assert tiny_paths == full_paths


def test_config_dict_round_trip_and_unknown_key():
    for config in (SdxlUNetConfig.full(), SdxlUNetConfig.tiny()):
        d = json.loads(json.dumps(config.to_dict()))
        assert SdxlUNetConfig.from_dict(d) == config
    assert SdxlUNetConfig.full() == SdxlUNetConfig()
    assert SdxlUNetConfig.full().time_embed_dim == 1280
    assert SdxlUNetConfig.full().pooled_dim == 1280
    assert SdxlUNetConfig.tiny().pooled_dim == 32
    with pytest.raises(UserError, match="unknown key.*model_chanels"):
        SdxlUNetConfig.from_dict({"model_chanels": 32})
    with pytest.raises(ValueError, match="norm_num_groups"):
        SdxlUNetConfig(model_channels=40)


def test_timestep_embedding_cosine_first_sgm_frequencies():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    assert emb[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    kohya = timestep_embedding(t, 8, freq_shift=1)
    assert kohya[1, 1] == pytest.approx(torch.cos(3.0 * torch.exp(-torch.log(torch.tensor(1e4)) / 3)).item())
    assert timestep_embedding(t, 7).shape == (2, 7)


def test_size_embedding_concatenates_per_value_embeddings():
    ids = torch.tensor([[1024, 768, 0, 32, 1024, 1024]])
    emb = size_embedding(ids, 256)
    assert emb.shape == (1, 1536)
    torch.testing.assert_close(emb[0, 256 * 3:256 * 4], timestep_embedding(torch.tensor([32]), 256)[0])


def test_tiny_forward_backward(tiny_unet):
    x, t, context, y = _tiny_inputs(tiny_unet.config, size=16)
    out = tiny_unet(x, t, context, y)
    assert out.shape == (2, 4, 16, 16) and out.dtype == torch.float32
    out.square().mean().backward()
    missing = [n for n, p in tiny_unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_tiny_forward_is_deterministic_and_uses_all_inputs(tiny_unet):
    x, t, context, y = _tiny_inputs(tiny_unet.config)
    torch.manual_seed(0)
    again = SdxlUNet(SdxlUNetConfig.tiny())
    with torch.no_grad():
        out = tiny_unet(x, t, context, y)
        assert torch.equal(out, again(x, t, context, y))
        torch.testing.assert_close(tiny_unet(x[:1], t[:1], context[:1], y[:1]), out[:1])  # per-sample
        assert not torch.allclose(out, tiny_unet(x, t.flip(0), context, y))
        assert not torch.allclose(out, tiny_unet(x, t, context + 1, y))
        assert not torch.allclose(out, tiny_unet(x, t, context, y + 1))
        scalar_t = tiny_unet(x, torch.tensor(10), context, y)
        torch.testing.assert_close(scalar_t, tiny_unet(x, torch.tensor([10, 10]), context, y))


def test_gradient_checkpointing_same_output_and_grads(tiny_unet, monkeypatch):
    x, t, context, y = _tiny_inputs(tiny_unet.config)
    tiny_unet.train()

    def run():
        tiny_unet.zero_grad(set_to_none=True)
        out = tiny_unet(x, t, context, y)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in tiny_unet.named_parameters()}

    plain_out, plain_grads = run()
    tiny_unet.set_gradient_checkpointing(True)
    calls = []
    original = sdxl_unet.checkpoint
    monkeypatch.setattr(sdxl_unet, "checkpoint", lambda *a, **k: calls.append(k["use_reentrant"]) or original(*a, **k))
    ckpt_out, ckpt_grads = run()
    assert calls == [False] * (17 + 11)  # every ResNet and transformer block, non-reentrant
    with torch.no_grad():
        tiny_unet(x, t, context, y)
    tiny_unet.eval()(x, t, context, y)
    assert len(calls) == 28  # not under no_grad, not in eval mode
    torch.testing.assert_close(ckpt_out, plain_out)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, msg=name)


def test_frozen_unet_with_checkpointing_still_backpropagates_to_inputs(tiny_unet):
    tiny_unet.train().requires_grad_(False)
    tiny_unet.set_gradient_checkpointing(True)
    x, t, context, y = _tiny_inputs(tiny_unet.config)
    context.requires_grad_(True)
    tiny_unet(x, t, context, y).mean().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0


def test_attention_is_sdpa_and_matches_softmax_reference(monkeypatch):
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=32, context_dim=24, heads=4, head_dim=8)
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    out = attn(x, ctx)
    assert calls == [1]
    q = attn.to_q(x).reshape(2, 10, 4, 8).transpose(1, 2)
    k = attn.to_k(ctx).reshape(2, 7, 4, 8).transpose(1, 2)
    v = attn.to_v(ctx).reshape(2, 7, 4, 8).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    reference = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(out, reference)


def test_attention_backend_errors(tiny_unet, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers` raise ImportError
    with pytest.raises(UserError, match="'xformers' package is not installed"):
        tiny_unet.set_attention_backend("xformers")
    with pytest.raises(UserError, match="use 'sdpa' or 'xformers'"):
        tiny_unet.set_attention_backend("flash")
    assert {m.attention_backend for m in tiny_unet.modules() if isinstance(m, CrossAttention)} == {"sdpa"}


def test_xformers_backend_passes_batch_tokens_heads_layout(tiny_unet, monkeypatch):
    """A stand-in for xformers.ops (B, N, heads, d) must give the sdpa result."""
    def memory_efficient_attention(q, k, v):
        assert q.shape[2] in (4, 8) and q.is_contiguous()  # heads of 64 and 128 channels
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    package, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention, package.ops = memory_efficient_attention, ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    x, t, context, y = _tiny_inputs(tiny_unet.config)
    with torch.no_grad():
        reference = tiny_unet(x, t, context, y)
        tiny_unet.set_attention_backend("xformers")
        torch.testing.assert_close(tiny_unet(x, t, context, y), reference)


def test_bf16_autocast_and_bf16_weights(tiny_unet):
    x, t, context, y = _tiny_inputs(tiny_unet.config)
    with torch.no_grad():
        reference = tiny_unet(x, t, context, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_unet(x, t, context, y)
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, reference, atol=0.1, rtol=0.1)
        tiny_unet.to(torch.bfloat16)
        half = tiny_unet(x, t, context, y)
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        torch.testing.assert_close(half, reference, atol=0.1, rtol=0.1)


def _diffusers_to_sgm(key: str, config: SdxlUNetConfig) -> str:
    """Map a diffusers SDXL UNet key to SGM naming (test-only, for the tiny parity check)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    blocks_per_level = config.num_res_blocks
    module, param = key.rsplit(".", 1)
    if module in fixed:
        return f"{fixed[module]}.{param}"
    parts = module.split(".")
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        head, rest = f"middle_block.{index}", parts[3:]
    elif parts[0] == "down_blocks":
        level, kind, i = int(parts[1]), parts[2], int(parts[3])
        block = 1 + level * (blocks_per_level + 1) + (i if kind != "downsamplers" else blocks_per_level)
        sub = {"resnets": "0", "attentions": "1", "downsamplers": "0"}[kind]
        head, rest = f"input_blocks.{block}.{sub}", parts[4:]
        rest = ["op"] if kind == "downsamplers" else rest
    else:
        level, kind, i = int(parts[1]), parts[2], int(parts[3])
        block = level * (blocks_per_level + 1) + (i if kind != "upsamplers" else blocks_per_level)
        has_attn = config.transformer_depth[len(config.channel_mult) - 1 - level] > 0
        sub = {"resnets": "0", "attentions": "1", "upsamplers": "2" if has_attn else "1"}[kind]
        head, rest = f"output_blocks.{block}.{sub}", parts[4:]
    if rest and rest[0] in resnet:
        rest = [resnet[rest[0]]]
    return ".".join([head, *rest, param])


def test_tiny_matches_diffusers_sdxl_unet():
    """Same weights in diffusers' UNet2DConditionModel (SDXL layout) give the same prediction."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    config = SdxlUNetConfig.tiny()
    torch.manual_seed(3)
    reference = UNet2DConditionModel(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=config.level_channels, layers_per_block=config.num_res_blocks,
        attention_head_dim=tuple(ch // config.num_head_channels for ch in config.level_channels),
        cross_attention_dim=config.context_dim, use_linear_projection=True, transformer_layers_per_block=1,
        addition_embed_type="text_time", addition_time_embed_dim=config.size_embed_dim,
        projection_class_embeddings_input_dim=config.adm_in_channels, norm_num_groups=config.norm_num_groups,
    ).eval()
    ours = SdxlUNet(config).eval()
    mapped = {_diffusers_to_sgm(k, config): v for k, v in reference.state_dict().items()}
    ours.load_state_dict(mapped, strict=True)
    x, t, context, _ = _tiny_inputs(config, size=16)
    pooled = torch.randn(2, config.pooled_dim)
    time_ids = torch.tensor([[64.0, 48, 0, 8, 64, 64], [1024, 1024, 16, 0, 896, 1152]])
    y = torch.cat([pooled, size_embedding(time_ids, config.size_embed_dim)], dim=1)
    with torch.no_grad():
        expected = reference(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        torch.testing.assert_close(ours(x, t, context, y), expected, atol=1e-4, rtol=1e-4)


def test_conv_projection_variant():
    config = dataclasses.replace(SdxlUNetConfig.tiny(), use_linear_in_transformer=False)
    unet = SdxlUNet(config)
    assert unet.state_dict()["input_blocks.4.1.proj_in.weight"].shape == (64, 64, 1, 1)
    x, t, context, y = _tiny_inputs(config)
    with torch.no_grad():
        assert unet(x, t, context, y).shape == x.shape
