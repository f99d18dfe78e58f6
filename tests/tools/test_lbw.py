"""Layer-block weights (kohya's LBW layouts) in merge_lora and svd_merge_lora."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from library.lora.convert import checkpoint_targets, lbw_block_index, lbw_slots, lbw_weight
from library.lora.file import read_lora
from library.io.safetensors_io import read_header
from tools import merge_lora, svd_merge_lora


@pytest.mark.parametrize("name,sdxl,slot", [
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", True, 0),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", True, 5),    # IN04
    ("lora_unet_middle_block_1_proj_in", True, 13),                             # MID
    ("lora_unet_output_blocks_5_1_proj_out", True, 19),                          # OUT05
    ("lora_unet_down_blocks_0_attentions_1_proj_in", False, 3),                  # IN02 = input_blocks.2
    ("lora_unet_down_blocks_1_downsamplers_0_conv", False, 7),                  # IN06 = input_blocks.6
    ("lora_unet_mid_block_attentions_0_proj_out", False, 13),
    ("lora_unet_up_blocks_1_attentions_2_proj_out", False, 19),                  # OUT05 = output_blocks.5
    ("lora_unet_up_blocks_0_upsamplers_0_conv", False, 16),                      # OUT02
])
def test_block_index(name, sdxl, slot):
    assert lbw_block_index(name, sdxl) == slot


def test_layouts_and_weights():
    assert [len(lbw_slots(n)) for n in (12, 17, 20, 26)] == [12, 17, 20, 26]
    sdxl12 = [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]  # BASE IN04 IN05 IN07 IN08 MID OUT00..05
    assert lbw_weight("lora_te2_text_model_encoder_layers_3_mlp_fc2", sdxl12) == 0.0
    assert lbw_weight("lora_unet_input_blocks_8_1_proj_in", sdxl12) == 5.0
    assert lbw_weight("lora_unet_output_blocks_5_1_proj_in", sdxl12) == 12.0
    assert lbw_weight("lora_unet_output_blocks_7_1_proj_in", sdxl12) == 1.0  # not in the 12-value layout
    assert lbw_weight("anything", None) == 1.0


def test_merge_into_checkpoint_with_lbws(tmp_path, kit, tiny_ckpt):
    ckpt = tiny_ckpt("sdxl")
    shapes = {k: tuple(v["shape"]) for k, v in read_header(ckpt)[0].items()}
    lora = kit.save(kit.lora_for_checkpoint(shapes, "sdxl", 2), tmp_path / "l.safetensors")
    out = tmp_path / "m.safetensors"
    lbw = "[0,0,1,1,1,1,1,1,1,1,1,1]"  # BASE (text encoders) and IN04 off
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", lora, "--ratios", 1, "--lbws", lbw, "--save_to", out) == 0
    base, merged = load_file(ckpt), load_file(out)
    targets = checkpoint_targets(shapes, "sdxl")
    for name, (key, _) in targets.items():
        off = name.startswith("lora_te") or name.startswith("lora_unet_input_blocks_4_")
        assert torch.equal(merged[key], base[key]) == off, name
    assert kit.run(merge_lora, "--models", lora, "--ratios", 1, "--lbws", "[1,2]", "--save_to", tmp_path / "x.safetensors") == 2


def test_svd_merge_with_lbws(tmp_path, kit):
    src = kit.save(kit.random_lora("lora_keys_sdxl", 2, count=40, max_elems=1280 * 1280), tmp_path / "a.safetensors")
    out = tmp_path / "s.safetensors"
    lbw = "[0,1,1,1,1,1,1,1,1,1,1,1]"
    assert kit.run(svd_merge_lora, "--models", src, "--ratios", 1, "--lbws", lbw, "--new_rank", 2, "--save_to", out) == 0
    mods = read_lora(out).modules
    assert any(n.startswith("lora_te") for n in mods)
    for name, (down, up, _) in mods.items():
        assert (not up.any()) == name.startswith("lora_te"), name


def test_diffusers_named_sdxl_lora_merges_into_sgm_checkpoint(tmp_path, kit, tiny_ckpt):
    ckpt = tiny_ckpt("sdxl")
    shapes = {k: tuple(v["shape"]) for k, v in read_header(ckpt)[0].items()}
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    t = {f"{name}.lora_down.weight": torch.ones(1, shapes[key][1]), f"{name}.lora_up.weight": torch.ones(shapes[key][0], 1),
         f"{name}.alpha": torch.tensor(1.0)}
    out = tmp_path / "m.safetensors"
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", kit.save(t, tmp_path / "d.safetensors"), "--ratios", 0.25,
                   "--save_to", out) == 0
    assert torch.allclose(load_file(out)[key], load_file(ckpt)[key] + 0.25)
