"""networks.lora saving, loading, create_network_from_weights and merge_to."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

import networks.lora as L
from library.errors import UserError
from library.io.safetensors_io import data_section_sha256, lora_hashes, read_header
from netkit import ToyTextEncoder, ToyUNet, perturb
from networks import _targets as T


def _net(*args, **kw):
    te, unet = ToyTextEncoder(), ToyUNet()
    net = L.create_network(1.0, 4, 2, None, te, unet, *args, **kw)
    net.apply_to(te, unet, True, True)
    perturb(net)
    return te, unet, net


def test_save_fp16_casts_alpha_and_writes_hashes_without_metadata(tmp_path):
    _, _, net = _net()
    path = tmp_path / "a.safetensors"
    net.save_weights(str(path), torch.float16, None)
    header, meta = read_header(path)
    assert {v["dtype"] for v in header.values()} == {"F16"}
    assert header["lora_unet_down_blocks_0_attentions_0_to_q.alpha"]["shape"] == []
    assert meta["sshs_model_hash"] == data_section_sha256(path)
    sd = {k: v.to(torch.float16) for k, v in net.state_dict().items()}
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == lora_hashes(sd, {})
    assert set(meta) == {"sshs_model_hash", "sshs_legacy_hash"}


def test_save_keeps_metadata_and_pt_has_none(tmp_path):
    _, _, net = _net()
    meta_in = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4"}
    net.save_weights(str(tmp_path / "m.safetensors"), None, meta_in)
    meta = read_header(tmp_path / "m.safetensors")[1]
    assert meta["ss_base_model_version"].startswith("sdxl_") and meta["ss_network_dim"] == "4"
    assert meta["sshs_legacy_hash"] == lora_hashes(net.state_dict(), meta_in)[1]
    net.save_weights(str(tmp_path / "m.pt"), None, meta_in)
    sd = torch.load(tmp_path / "m.pt", weights_only=True)
    assert sd.keys() == net.state_dict().keys() and sd[next(iter(sd))].dtype == torch.float32


def test_inexact_alpha_cast_warns(tmp_path, caplog):
    te, unet = ToyTextEncoder(), ToyUNet()
    net = L.create_network(1.0, 4, 0.3, None, te, unet)
    net.apply_to(te, unet, True, True)
    with caplog.at_level(logging.WARNING):
        net.save_weights(str(tmp_path / "w.safetensors"), torch.bfloat16, {})
    assert "not exact in torch.bfloat16" in caplog.text


def test_load_weights_refreshes_scale_and_reports_missing(tmp_path):
    _, _, net = _net()
    sd = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("lora_unet")}
    sd["lora_unet_down_blocks_0_attentions_0_to_q.alpha"] = torch.tensor(1.0)
    save_file(sd, str(tmp_path / "u.safetensors"))
    _, _, other = _net()
    info = other.load_weights(str(tmp_path / "u.safetensors"))
    assert info.missing_keys and all(k.startswith("lora_te") for k in info.missing_keys)
    assert not info.unexpected_keys
    q = dict(other.named_children())["lora_unet_down_blocks_0_attentions_0_to_q"]
    assert q.scale == 0.25 and torch.equal(q.lora_up.weight, sd[f"{q.lora_name}.lora_up.weight"])


def test_load_weights_rank_or_architecture_mismatch_is_a_user_error(tmp_path):
    _, _, net = _net()
    te, unet = ToyTextEncoder(), ToyUNet()
    big = L.create_network(1.0, 8, 1, None, te, unet)
    big.apply_to(te, unet, True, True)
    big.save_weights(str(tmp_path / "r8.safetensors"), None, None)
    with pytest.raises(UserError, match=r"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight has "
                                        r"shape \(8, 8\), this network expects \(4, 8\)"):
        net.load_weights(str(tmp_path / "r8.safetensors"))
    save_file({"lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(1.0)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(UserError, match="no key matches this network .first: lora_unet_input_blocks_4_1_proj_in"):
        net.load_weights(str(tmp_path / "xl.safetensors"))


def test_load_weights_of_a_non_weights_file_is_one_line(tmp_path):
    _, _, net = _net()
    text = tmp_path / "train.toml"
    text.write_text("network_dim = 4\n")
    with pytest.raises(UserError) as err:
        net.load_weights(str(text))
    message = str(err.value)
    assert message.startswith(f"{text}: cannot be read as a weights-only torch file (")
    assert message.endswith("); convert it to .safetensors") and "\n" not in message
    with pytest.raises(UserError, match="missing.safetensors: file not found"):
        net.load_weights(str(tmp_path / "missing.safetensors"))


def test_create_from_weights_takes_ranks_alphas_and_enables_conv(tmp_path):
    te, unet, net = _net(conv_dim="2", conv_alpha="1")
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("to_q.alpha")}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "c.safetensors"))
    new, weights = L.create_network_from_weights(1.0, str(tmp_path / "c.safetensors"), None, te, unet)
    by_name = {m.lora_name: m for m in new.text_encoder_loras + new.unet_loras}
    assert set(by_name) == {m.lora_name for m in net.text_encoder_loras + net.unet_loras}
    assert by_name["lora_unet_down_blocks_0_resnets_0_conv1"].lora_dim == 2
    assert by_name["lora_unet_down_blocks_0_attentions_0_to_q"].scale == 1.0  # alpha missing -> rank
    assert by_name["lora_unet_down_blocks_0_attentions_0_to_out_0"].scale == 0.5


@pytest.mark.parametrize("key,shape,message", [
    ("lora_unet_down_blocks_0_attentions_0_to_k.lora_down.weight", (4, 8), "key lora_unet_down_blocks_0_attentions_0_to_k"
     ".lora_down.weight matches no layer of this model"),
    ("lora_unet_down_blocks_0_attentions_0_to_q.lora_down.weight", (4, 16), r"has shape \(4, 16\) but this model "
     r"needs \(4, 8\)"),
    ("lora_unet_down_blocks_0_attentions_0_to_q.hada_w1_a", (8, 4), "not a LoRA/LoCon tensor; load this file with "
     "--network_module lycoris.kohya"),
])
def test_create_from_weights_rejects_other_architectures(tmp_path, key, shape, message):
    save_file({key: torch.zeros(shape)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=message):
        L.create_network_from_weights(1.0, str(tmp_path / "bad.safetensors"), None, ToyTextEncoder(), ToyUNet())


def test_sdxl_diffusers_named_keys_are_converted(tmp_path):
    from library.models.sdxl_unet import SdxlUNet, SdxlUNetConfig

    unet = SdxlUNet(SdxlUNetConfig.tiny())
    net = L.create_network(1.0, 2, 1, None, None, unet, conv_dim="2")
    net.apply_to(None, unet, False, True)
    perturb(net)
    to_diff = {v: k for k, v in T.sdxl_diffusers_lora_names(unet).items()}
    sd = {to_diff[k.partition(".")[0]] + "." + k.partition(".")[2]: v for k, v in net.state_dict().items()}
    assert all(k.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks")) for k in sd)
    new, weights = L.create_network_from_weights(1.0, "d.safetensors", None, None, unet, weights_sd=sd)
    assert set(weights) == set(net.state_dict())
    new.apply_to(None, unet, False, True)
    new.load_state_dict(weights)
    assert all(torch.equal(new.state_dict()[k], v) for k, v in net.state_dict().items())
    net.restore()
    new.restore()


def test_merge_refuses_non_finite_and_leaves_weights(tmp_path):
    te, unet, net = _net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["lora_unet_down_blocks_0_attentions_0_to_q.lora_up.weight"][0, 0] = float("inf")
    net.restore()
    new, weights = L.create_network_from_weights(1.0, "x.safetensors", None, te, unet, weights_sd=sd, for_inference=True)
    q = unet.down_blocks[0].attentions[0].to_q.weight.clone()
    with pytest.raises(UserError, match="lora_unet_down_blocks_0_attentions_0_to_q: merging gives NaN/Inf"):
        new.merge_to(te, unet, weights, None, "cpu")
    assert torch.equal(unet.down_blocks[0].attentions[0].to_q.weight, q)
