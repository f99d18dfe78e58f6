"""Key maps: LDM/SGM ⇄ diffusers UNet, VAE, OpenCLIP ⇄ transformers (FORMAT.md §9.2, §10)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from library.checkpoint import keymaps
from library.checkpoint.diffusers_folder import sdxl_config_to_diffusers
from library.models.sd_unet import build_sd_unet, sd_unet_config
from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig
from library.models.vae import build_vae, vae_config

SPEC_DATA = Path(__file__).resolve().parents[1] / "assets"


def _manifest(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (SPEC_DATA / name).read_text().splitlines():
        key, _, shape = line.split("\t")
        if key.startswith(prefix):
            out[key[len(prefix):]] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return out


def _meta_state(build, cfg) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in build(cfg).state_dict().items()}


@pytest.mark.parametrize("variant,manifest", [("sd1", "sd15_ldm_keys.tsv"), ("sd2", "sd2_ldm_keys.tsv")])
def test_sd_unet_map_matches_manifest_keys_and_shapes(variant, manifest):
    cfg = sd_unet_config(variant)
    mapping = keymaps.ldm_unet_to_diffusers_map(cfg)
    expected = _manifest(manifest, "model.diffusion_model.")
    shapes = _meta_state(build_sd_unet, cfg)
    assert set(mapping) == set(expected)
    assert {k: tuple(shapes[d]) for k, d in mapping.items()} == expected
    assert keymaps.diffusers_to_ldm_unet_map(cfg) == {d: k for k, d in mapping.items()}


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_tiny_sd_unet_has_the_full_ldm_names(variant):
    tiny = keymaps.ldm_unet_to_diffusers_map(sd_unet_config(variant, tiny=True))
    assert tiny == keymaps.ldm_unet_to_diffusers_map(sd_unet_config(variant))


@pytest.mark.parametrize("ldm,diffusers", [
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.1.0.in_layers.2.weight", "down_blocks.0.resnets.0.conv1.weight"),
    ("input_blocks.2.1.proj_in.weight", "down_blocks.0.attentions.1.proj_in.weight"),
    ("input_blocks.3.0.op.bias", "down_blocks.0.downsamplers.0.conv.bias"),
    ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
    ("middle_block.1.transformer_blocks.0.attn2.to_k.weight", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
    ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
    ("output_blocks.5.2.conv.weight", "up_blocks.1.upsamplers.0.conv.weight"),
    ("output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"),
    ("output_blocks.11.1.norm.weight", "up_blocks.3.attentions.2.norm.weight"),
    ("output_blocks.4.0.out_layers.3.weight", "up_blocks.1.resnets.1.conv2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.2.bias", "conv_out.bias"),
])
def test_sd1_unet_examples_from_the_spec(ldm, diffusers):
    assert keymaps.ldm_unet_to_diffusers_map(sd_unet_config("sd1", tiny=True))[ldm] == diffusers
    assert keymaps.unet_ldm_to_diffusers_key(ldm) == diffusers


def test_sdxl_sgm_map_matches_manifest_and_diffusers_shapes():
    cfg = SdxlUNetConfig.full()
    mapping = keymaps.ldm_unet_to_diffusers_map(cfg)
    expected = _manifest("sdxl_base_ldm_keys.tsv", "model.diffusion_model.")
    sgm = _meta_state(SdxlUNet, cfg)
    from diffusers import UNet2DConditionModel

    diff = _meta_state(lambda c: UNet2DConditionModel(**c), sdxl_config_to_diffusers(cfg))
    assert {k: tuple(v) for k, v in sgm.items()} == expected
    assert set(mapping.values()) == set(diff)
    assert all(diff[d] == sgm[k] for k, d in mapping.items())
    assert mapping["label_emb.0.0.weight"] == "add_embedding.linear_1.weight"
    assert mapping["output_blocks.2.2.conv.weight"] == "up_blocks.0.upsamplers.0.conv.weight"
    assert mapping["output_blocks.5.2.conv.weight"] == "up_blocks.1.upsamplers.0.conv.weight"
    assert mapping["input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight"] == \
        "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight"
    up_attn = {0, 1}
    assert all(keymaps.unet_diffusers_to_ldm_key(d, 2, up_attn) == k for k, d in mapping.items())


def test_unknown_unet_key_raises_keyerror():
    with pytest.raises(KeyError):
        keymaps.unet_ldm_to_diffusers_key("foo.bar")
    with pytest.raises(KeyError):
        keymaps.unet_diffusers_to_ldm_key("down_blocks.x.weight")


def test_vae_map_matches_manifest_and_round_trips_values():
    expected = _manifest("sd15_ldm_keys.tsv", "first_stage_model.")
    with torch.device("meta"):
        meta = build_vae(vae_config()).state_dict()
    ldm = keymaps.vae_diffusers_to_ldm(meta)
    assert {k: tuple(v.shape) for k, v in ldm.items()} == expected
    assert ldm["decoder.up.3.block.0.conv1.weight"].shape == meta["decoder.up_blocks.0.resnets.0.conv1.weight"].shape
    assert tuple(ldm["encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    tiny = {k: torch.randn(v.shape) for k, v in build_vae(vae_config(tiny=True)).state_dict().items()}
    back = keymaps.vae_ldm_to_diffusers(keymaps.vae_diffusers_to_ldm(tiny))
    assert back.keys() == tiny.keys() and all(torch.equal(back[k], tiny[k]) for k in tiny)
    assert keymaps.vae_ldm_to_diffusers_key("decoder.up.0.upsample.conv.weight") == \
        "decoder.up_blocks.3.upsamplers.0.conv.weight"
    assert keymaps.vae_diffusers_to_ldm_key("encoder.down_blocks.1.resnets.0.conv_shortcut.bias") == \
        "encoder.down.1.block.0.nin_shortcut.bias"


def _openclip_tiny(d=8, layers=2, proj=True):
    sd = {"token_embedding.weight": torch.randn(10, d), "positional_embedding": torch.randn(5, d),
          "ln_final.weight": torch.randn(d), "ln_final.bias": torch.randn(d), "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "ln_1.weight": torch.randn(d), p + "ln_2.bias": torch.randn(d),
                   p + "attn.in_proj_weight": torch.randn(3 * d, d), p + "attn.in_proj_bias": torch.randn(3 * d),
                   p + "attn.out_proj.weight": torch.randn(d, d), p + "mlp.c_fc.weight": torch.randn(4 * d, d),
                   p + "mlp.c_proj.bias": torch.randn(d)})
    if proj:
        sd["text_projection"] = torch.randn(d, 6)
    return sd


def test_openclip_to_transformers_splits_qkv_and_transposes_projection():
    sd = _openclip_tiny()
    out, extras = keymaps.openclip_to_transformers({"m." + k: v for k, v in sd.items()}, "m.")
    fused = sd["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(out["text_model.encoder.layers.1.self_attn.q_proj.weight"], fused[:8])
    assert torch.equal(out["text_model.encoder.layers.1.self_attn.k_proj.weight"], fused[8:16])
    assert torch.equal(out["text_model.encoder.layers.1.self_attn.v_proj.weight"], fused[16:])
    assert torch.equal(out["text_projection.weight"], sd["text_projection"].t())
    assert torch.equal(out["text_model.encoder.layers.0.mlp.fc1.weight"], sd["transformer.resblocks.0.mlp.c_fc.weight"])
    assert torch.equal(out["text_model.embeddings.position_embedding.weight"], sd["positional_embedding"])
    assert torch.equal(out["text_model.final_layer_norm.bias"], sd["ln_final.bias"])
    assert list(extras) == ["logit_scale"]
    back = keymaps.transformers_to_openclip(out, "m.")
    assert set(back) == {"m." + k for k in sd if k != "logit_scale"}
    assert all(torch.equal(back["m." + k], v) for k, v in sd.items() if k != "logit_scale")


def test_openclip_sd2_drop_and_placeholders():
    sd = _openclip_tiny(layers=3)
    out, _ = keymaps.openclip_to_transformers(sd, "", num_layers=2, keep_projection=False)
    assert not any(".layers.2." in k for k in out) and "text_projection.weight" not in out
    back = keymaps.transformers_to_openclip(out, "", pad_layers_to=3, projection_placeholder=True)
    assert torch.equal(back["transformer.resblocks.2.attn.in_proj_weight"], sd["transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(back["text_projection"], torch.ones(8, 8))
