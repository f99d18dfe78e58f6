"""networks._targets: names, block indices, LR-weight presets, network_args parsing, SDXL name map."""

from __future__ import annotations

import logging
import math

import pytest

from library.errors import UserError
from networks import _targets as T

log = logging.getLogger("test")


def test_lora_name_replaces_every_dot():
    assert T.lora_name("lora_unet", "input_blocks.4.1", "transformer_blocks.0.attn1.to_q") == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize("name,idx", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 1),
    ("lora_unet_down_blocks_1_resnets_1_conv1", 5),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", 9),
    ("lora_unet_mid_block_attentions_0_proj_in", 12),
    ("lora_unet_up_blocks_0_resnets_2_conv2", 15),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", 24),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", 18),
])
def test_block_index_sd(name, idx):
    assert T.block_index(name, is_sdxl=False) == idx


@pytest.mark.parametrize("name,idx", [
    ("lora_unet_input_blocks_4_1_proj_in", 5),
    ("lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2", 9),
    ("lora_unet_middle_block_1_proj_out", 11),
    ("lora_unet_middle_block_2_in_layers_2", 12),
    ("lora_unet_output_blocks_0_1_proj_in", 13),
    ("lora_unet_output_blocks_8_0_skip_connection", 21),
    ("lora_unet_time_embed_0", 0),
    ("lora_unet_out_2", 22),
])
def test_block_index_sdxl(name, idx):
    assert T.block_index(name, is_sdxl=True) == idx


def test_presets_follow_the_spec_formulas():
    assert T.lr_weight_preset("linear", 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert T.lr_weight_preset("reverse_linear", 3) == [1.0, 0.5, 0.0]
    assert T.lr_weight_preset("zeros", 2) == [0.0, 0.0]
    sine = T.lr_weight_preset("sine+.5", 3)
    assert sine == pytest.approx([0.5, 0.5 + math.sin(math.pi / 4), 1.5])
    assert T.lr_weight_preset("cosine", 3) == pytest.approx([1.0, math.sin(math.pi / 4), 0.0])
    assert T.lr_weight_preset("square", 3) is None


def test_block_lr_weights_sdxl_layout_threshold_and_padding(caplog):
    w = T.block_lr_weights({"down_lr_weight": "zeros+0.05", "mid_lr_weight": "2,2,2", "up_lr_weight": "0.5",
                            "block_lr_zero_threshold": "0.1"}, True, log)
    assert w == [1.0] + [0.0] * 9 + [2.0] * 3 + [0.5] + [1.0] * 8 + [1.0]
    assert "mid_lr_weight" not in caplog.text and "up_lr_weight has 1 values, expected 9: padding with 1.0" in caplog.text


def test_block_lr_weights_sd_truncates_long_lists(caplog):
    w = T.block_lr_weights({"up_lr_weight": ",".join(["0.5"] * 14)}, False, log)
    assert len(w) == 25 and w[:13] == [1.0] * 13 and w[13:] == [0.5] * 12
    assert "has 14 values, expected 12: using the first 12" in caplog.text
    assert T.block_lr_weights({}, False, log) is None


def test_parse_defaults_and_conv():
    a = T.parse_network_args({"conv_dim": "8", "dropout": None, "unknown": "x"}, 4, 1.0, False, log)
    assert (a.conv_dim, a.conv_alpha, a.block_dims, a.rank_dropout) == (8, 1.0, None, None)
    a = T.parse_network_args({"conv_dim": "0", "conv_alpha": "0.5", "rank_dropout": "0.1",
                              "module_dropout": "0.2", "loraplus_lr_ratio": "16"}, 4, 1.0, False, log)
    assert (a.conv_dim, a.conv_alpha, a.rank_dropout, a.module_dropout, a.loraplus_lr_ratio) == (0, 0.5, 0.1, 0.2, 16.0)


def test_parse_block_dims_and_lr_zero_blocks():
    dims = ",".join(str(i % 5) for i in range(23))
    a = T.parse_network_args({"block_dims": dims, "conv_dim": "2", "down_lr_weight": "0,1,1,1,1,1,1,1,1"},
                             4, 1.0, True, log)
    assert a.block_dims[:4] == [0, 0, 2, 3] and a.block_alphas == [1.0] * 23
    assert a.conv_block_dims[1] == 0 and a.conv_block_dims[2] == 2 and a.conv_block_alphas == [1.0] * 23
    a = T.parse_network_args({"up_lr_weight": "sine"}, 8, 2.0, False, log)
    assert a.block_dims[13] == 0 and a.block_dims[14] == 8 and a.block_alphas[0] == 2.0


@pytest.mark.parametrize("kwargs,message", [
    ({"conv_dim": "four"}, "--network_args conv_dim=four: expected an integer"),
    ({"conv_dim": "-1"}, "conv_dim=-1: must be >= 0"),
    ({"conv_dim": "4", "conv_alpha": "x"}, "conv_alpha=x: expected a number"),
    ({"rank_dropout": "1.5"}, "rank_dropout=1.5: must be a finite number in [0.0, 1.0)"),
    ({"module_dropout": "nan"}, "module_dropout=nan"),
    ({"block_dims": "4,4"}, "block_dims=4,4: expected exactly 25 comma-separated values (25 values: 0 = unused"),
    ({"block_dims": ",".join(["4"] * 25), "block_alphas": "1"}, "block_alphas=1: expected exactly 25"),
    ({"down_lr_weight": "squared"}, "down_lr_weight=squared: expected 12 comma-separated numbers or a preset"),
    ({"up_lr_weight": "sine+x"}, "up_lr_weight=sine+x: preset base after '+' must be a number"),
    ({"mid_lr_weight": "-1"}, "mid_lr_weight=-1: must be a finite number >= 0.0"),
    ({"loraplus_lr_ratio": "big"}, "loraplus_lr_ratio=big: expected a number"),
])
def test_bad_values_give_one_clear_user_error(kwargs, message):
    with pytest.raises(UserError) as e:
        T.parse_network_args(kwargs, 4, 1.0, False, log)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sdxl_block_dims_error_states_the_layout():
    with pytest.raises(UserError, match="expected exactly 23 .*13-21 = output_blocks 0-8"):
        T.parse_network_args({"block_dims": "4"}, 4, 1.0, True, log)


def test_sdxl_diffusers_names_map_to_sgm():
    import torch
    from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig

    with torch.device("meta"):
        unet = SdxlUNet(SdxlUNetConfig.full())
    m = T.sdxl_diffusers_lora_names(unet)
    assert m["lora_unet_down_blocks_1_attentions_0_proj_in"] == "lora_unet_input_blocks_4_1_proj_in"
    assert m["lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k"] == \
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k"
    assert m["lora_unet_down_blocks_0_resnets_1_conv1"] == "lora_unet_input_blocks_2_0_in_layers_2"
    assert m["lora_unet_down_blocks_1_downsamplers_0_conv"] == "lora_unet_input_blocks_6_0_op"
    assert m["lora_unet_mid_block_resnets_1_time_emb_proj"] == "lora_unet_middle_block_2_emb_layers_1"
    assert m["lora_unet_mid_block_attentions_0_proj_out"] == "lora_unet_middle_block_1_proj_out"
    assert m["lora_unet_up_blocks_0_resnets_2_conv_shortcut"] == "lora_unet_output_blocks_2_0_skip_connection"
    assert m["lora_unet_up_blocks_1_attentions_2_proj_out"] == "lora_unet_output_blocks_5_1_proj_out"
    assert m["lora_unet_up_blocks_0_upsamplers_0_conv"] == "lora_unet_output_blocks_2_2_conv"
    assert m["lora_unet_up_blocks_1_upsamplers_0_conv"] == "lora_unet_output_blocks_5_2_conv"
    assert len(m) == len(set(m.values()))
