"""networks.lora: LoRAModule math, dropouts, targets and counts on the toy model, optimizer groups, max-norm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import networks.lora as L
from library.lora.algebra import delta_weight
from netkit import ToyTextEncoder, ToyUNet, perturb


def _module(layer, **kw):
    m = L.LoRAModule("lora_x", layer, **kw)
    m.apply_to()
    return m


@pytest.mark.parametrize("alpha,dim,scale", [(None, 4, 1.0), (0, 8, 1.0), (1, 4, 0.25), (16.0, 8, 2.0),
                                             (torch.tensor(2.0), 4, 0.5)])
def test_scale_and_alpha_buffer(alpha, dim, scale):
    m = L.LoRAModule("x", nn.Linear(3, 5), lora_dim=dim, alpha=alpha)
    assert m.scale == scale and m.alpha.dim() == 0 and m.alpha.dtype == torch.float32
    assert float(m.alpha) == scale * dim


def test_init_is_kaiming_down_and_zero_up():
    m = L.LoRAModule("x", nn.Linear(300, 7), lora_dim=6)
    assert torch.count_nonzero(m.lora_up.weight) == 0
    bound = 1 / math.sqrt(300)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    w = m.lora_down.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and w.shape == (6, 300)


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(6, 5), torch.randn(2, 3, 6)),
    (nn.Conv2d(6, 5, 1), torch.randn(2, 6, 4, 4)),
    (nn.Conv2d(6, 5, 3, stride=2, padding=1), torch.randn(2, 6, 5, 5)),
])
def test_forward_equals_w_plus_scaled_delta(layer, x):
    m = _module(layer, lora_dim=3, alpha=1.5, multiplier=0.7)
    perturb(m)
    with torch.no_grad():
        expect = nn.functional.linear(x, layer.weight + 0.7 * delta_weight(m.lora_up.weight, m.lora_down.weight, 0.5),
                                      layer.bias) if isinstance(layer, nn.Linear) else nn.functional.conv2d(
            x, layer.weight + 0.7 * delta_weight(m.lora_up.weight, m.lora_down.weight, 0.5), layer.bias,
            layer.stride, layer.padding)
        torch.testing.assert_close(layer(x), expect, atol=1e-5, rtol=1e-5)
    if isinstance(layer, nn.Conv2d):
        assert m.lora_up.weight.shape == (5, 3, 1, 1) and m.lora_down.weight.shape[2:] == layer.kernel_size


def test_module_dropout_only_in_training():
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    base = layer(x)
    m = _module(layer, module_dropout=0.999999)
    perturb(m)
    assert torch.equal(layer(x), base)
    m.eval()
    assert not torch.allclose(layer(x), base)


def test_rank_dropout_masks_per_sample_and_rescales():
    layer = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(layer.weight)
    m = _module(layer, lora_dim=2, alpha=2, rank_dropout=0.5)
    with torch.no_grad():
        m.lora_down.weight.copy_(torch.eye(2, 4))
        m.lora_up.weight.copy_(torch.eye(4, 2))
    x = torch.ones(64, 3, 4)
    y = layer(x)
    # each sample/rank channel is either dropped or scaled by 1/(1-p) = 2, identical over tokens
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0} and torch.equal(y[:, 0], y[:, 2])
    assert 0 < torch.count_nonzero(y[:, 0, :2]) < 128
    m.eval()
    assert torch.equal(layer(x)[:, :, :2], torch.ones(64, 3, 2))


def test_neuron_dropout_only_in_training():
    layer = nn.Linear(8, 8)
    m = _module(layer, lora_dim=8, dropout=0.5)
    perturb(m)
    x = torch.randn(4, 8)
    assert not torch.equal(layer(x), layer(x))
    m.eval()
    assert torch.equal(layer(x), layer(x))


def _toy():
    return [ToyTextEncoder()], ToyUNet()


def test_targets_and_conv_modules_on_toy_model():
    tes, unet = _toy()
    names = [m.lora_name for m in L.create_network(1.0, None, None, None, tes[0], unet).unet_loras]
    assert names == ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_attentions_0_to_q",
                     "lora_unet_down_blocks_0_attentions_0_to_out_0", "lora_unet_down_blocks_0_attentions_0_proj_out"]
    conv = L.create_network(1.0, 4, 1, None, tes[0], unet, conv_dim="0")
    assert [m.lora_name for m in conv.unet_loras][4:] == ["lora_unet_down_blocks_0_resnets_0_time_emb_proj",
                                                          "lora_unet_down_blocks_0_resnets_0_conv_shortcut"]
    conv = L.create_network(1.0, 4, 1, None, tes[0], unet, conv_dim="2", conv_alpha="1")
    ranks = {m.lora_name[len("lora_unet_down_blocks_0_"):]: m.lora_dim for m in conv.unet_loras}
    assert ranks["resnets_0_conv1"] == 2 and ranks["downsamplers_0_conv"] == 2 and ranks["resnets_0_conv_shortcut"] == 4
    again = L.create_network(1.0, 4, 1, None, tes[0], unet)  # no shared class state after a conv network
    assert len(again.unet_loras) == 4


def test_defaults_dim_4_alpha_1_and_te_names(caplog):
    tes, unet = _toy()
    net = L.create_network(1.0, None, None, None, tes[0], unet, dropout=None, algo="loha")
    assert "network_args ignored by networks.lora: algo" in caplog.text
    assert {m.lora_dim for m in net.unet_loras} == {4} and {float(m.alpha) for m in net.unet_loras} == {1.0}
    assert [m.lora_name for m in net.text_encoder_loras] == [
        f"lora_te_text_model_encoder_layers_0_{s}" for s in
        ("self_attn_k_proj", "self_attn_v_proj", "self_attn_q_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")]
    two = L.create_network(1.0, 4, 1, None, [tes[0], ToyTextEncoder()], None)
    assert {m.lora_name[:9] for m in two.text_encoder_loras} == {"lora_te1_", "lora_te2_"}


def test_text_model_level_is_kept_for_a_te_without_it():
    flat = ToyTextEncoder().text_model  # transformers-5 style: no text_model level
    net = L.create_network(1.0, 4, 1, None, flat, None)
    assert net.text_encoder_loras[0].lora_name == "lora_te_text_model_encoder_layers_0_self_attn_k_proj"


def test_optimizer_groups_descriptions_loraplus_and_zero_lr():
    tes, unet = _toy()
    net = L.create_network(1.0, 4, 1, None, [tes[0], ToyTextEncoder()], unet, loraplus_unet_lr_ratio="4")
    net.apply_to(tes, unet, True, True)
    groups, descs = net.prepare_optimizer_params_with_multiple_te_lrs([1e-5, 2e-5], 1e-4, 1e-3)
    assert descs == ["textencoder 1", "textencoder 2", "unet", "unet plus"]
    assert [g["lr"] for g in groups] == [1e-5, 2e-5, 1e-4, 4e-4]
    assert sorted(id(q) for g in groups for q in g["params"]) == sorted(id(p) for p in net.parameters())
    groups, descs = net.prepare_optimizer_params(0, None, 1e-3)
    assert descs == ["unet", "unet plus"] and groups[0]["lr"] == 1e-3
    net.set_loraplus_lr_ratio(None, None, 3.0)
    groups, descs = net.prepare_optimizer_params(1e-5, 1e-4, 1e-3)
    assert descs == ["textencoder", "textencoder plus", "unet"] and groups[1]["lr"] == pytest.approx(3e-5)


def test_block_lr_groups_and_zero_weight_blocks_have_no_modules():
    unet = ToyUNet()
    net = L.create_network(1.0, 4, 1, None, None, unet, conv_dim="4", down_lr_weight="0.5,0,1,1,1,1,1,1,1,1,1,1",
                           loraplus_lr_ratio="2")
    net.apply_to(None, unet, False, True)
    groups, descs = net.prepare_optimizer_params(None, 1e-4, 1e-3)
    # attentions_0 / resnets_0 -> block 1 (weight 0): no modules; downsamplers -> block 3 (weight 1)
    assert [m.lora_name for m in net.unet_loras] == ["lora_unet_down_blocks_0_downsamplers_0_conv"]
    assert descs == ["unet_block3", "unet_block3 plus"] and [g["lr"] for g in groups] == [1e-4, 2e-4]


def test_max_norm_regularization_scales_large_modules():
    layer = nn.Linear(8, 8)
    net = L.LoRANetwork([], None)
    net.unet_loras = [L.LoRAModule("lora_unet_a", layer, lora_dim=2, alpha=2)]
    with torch.no_grad():
        net.unet_loras[0].lora_up.weight.fill_(1.0)
    before = float(delta_weight(net.unet_loras[0].lora_up.weight, net.unet_loras[0].lora_down.weight).norm().detach())
    scaled, mean, top = net.apply_max_norm_regularization(0.5, "cpu")
    after = float(delta_weight(net.unet_loras[0].lora_up.weight, net.unet_loras[0].lora_down.weight).norm().detach())
    assert scaled == 1 and before > 0.5 and after == pytest.approx(0.5, rel=1e-5) and mean == pytest.approx(0.5)
    assert net.apply_max_norm_regularization(10.0, "cpu")[0] == 0


def test_forward_swap_restores_class_forward_in_any_order():
    layer = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    base = layer(x)
    a, b = _module(layer), _module(layer)
    perturb(a, 1)
    perturb(b, 2)
    assert "forward" in layer.__dict__ and set(layer.state_dict()) == {"weight", "bias"}
    a.restore()  # a is below b: b now wraps the original forward directly
    assert layer.forward == b.forward and b.org_forward != a.forward
    b.restore()
    assert "forward" not in layer.__dict__ and torch.equal(layer(x), base)
    custom = layer.forward
    layer.forward = custom  # an instance forward set by someone else is put back as it was
    c = _module(layer)
    c.restore()
    assert layer.__dict__["forward"] == custom
