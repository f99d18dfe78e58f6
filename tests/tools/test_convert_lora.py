"""convert_lora: kohya ⇄ PEFT for SD1.5 and SDXL (with conv), bit-exact round trips, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from library.lora.convert import adapter_metadata, alpha_from_metadata
from library.lora.algebra import delta_weight
from library.io.safetensors_io import read_metadata
from tools import convert_lora


@pytest.mark.parametrize("golden,family", [("lora_keys_sd15_conv", "sd1"), ("lora_keys_sdxl_conv", "sdxl"),
                                           ("lora_keys_sd2", "sd2")])
def test_kohya_peft_metadata_kohya_is_bit_exact(tmp_path, kit, golden, family):
    t = kit.random_lora(golden, 2, alpha=1.0)
    names = [k[: -len(".alpha")] for k in t if k.endswith(".alpha")]
    for i, n in enumerate(names[::7]):  # mixed ranks and alphas -> rank_pattern / alpha_pattern
        t[f"{n}.alpha"] = torch.tensor(0.1 * (i + 1))
    src = kit.save(t, tmp_path / "k.safetensors", {"ss_network_dim": "2", "ss_output_name": "x"})
    peft, back = tmp_path / "p.safetensors", tmp_path / "k2.safetensors"
    assert kit.run(convert_lora, "--model", src, "--save_to", peft, "--to", "peft", "--alpha_mode", "metadata") == 0
    p = load_file(peft)
    assert all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) and k.endswith(("lora_A.weight", "lora_B.weight"))
               for k in p)
    assert len(p) == 2 * len(names)
    meta = read_metadata(peft)
    assert meta["format"] == "pt" and set(meta) - {"format", "lora_adapter_metadata"} <= {k for k in meta if k.startswith("modelspec.")}
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert all(not m.startswith("text_model.") for m in adapter.get("text_encoder.target_modules", []))
    assert kit.run(convert_lora, "--model", peft, "--save_to", back, "--to", "kohya", "--arch", "auto") == 0
    b = load_file(back)
    assert set(b) == set(t)
    assert all(torch.equal(b[k], t[k]) and b[k].dtype == t[k].dtype for k in t)


def test_sd15_peft_names_are_diffusers_paths(tmp_path, kit):
    t = kit.random_lora("lora_keys_sd15_conv", 2, select=lambda n: n.endswith(("up_blocks_1_upsamplers_0_conv",
                                                                                 "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
                                                                                 "layers_3_self_attn_q_proj")))
    src = kit.save(t, tmp_path / "k.safetensors")
    peft = tmp_path / "p.safetensors"
    assert kit.run(convert_lora, "--model", src, "--save_to", peft, "--to", "peft") == 0
    assert sorted(load_file(peft)) == sorted(
        f"{p}.lora_{x}.weight" for p in ("unet.up_blocks.1.upsamplers.0.conv",
                                        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                                        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj") for x in "AB")


def test_bake_mode_keeps_the_product(tmp_path, kit):
    t = kit.random_lora("lora_keys_sdxl", 4, count=30, alpha=1.0)
    src = kit.save(t, tmp_path / "k.safetensors")
    peft, back = tmp_path / "p.safetensors", tmp_path / "k2.safetensors"
    assert kit.run(convert_lora, "--model", src, "--save_to", peft, "--to", "peft") == 0
    assert "lora_adapter_metadata" not in read_metadata(peft)
    assert kit.run(convert_lora, "--model", peft, "--save_to", back, "--to", "kohya") == 0
    b = load_file(back)
    for k in t:
        if k.endswith(".alpha"):
            assert float(b[k]) == 4.0  # baked: alpha restored as the rank
        elif k.endswith("lora_up.weight"):
            n = k[: -len(".lora_up.weight")]
            want = delta_weight(t[k], t[f"{n}.lora_down.weight"], 0.25)
            got = delta_weight(b[k], b[f"{n}.lora_down.weight"], 1.0)
            assert torch.allclose(got, want, atol=1e-7)


def test_diffusers_named_sdxl_kohya_keys_become_sgm(tmp_path, kit):
    t = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_down.weight": torch.randn(2, 2048),
         "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_up.weight": torch.randn(640, 2),
         "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.alpha": torch.tensor(1.0)}
    src = kit.save(t, tmp_path / "d.safetensors")
    out = tmp_path / "k.safetensors"
    assert kit.run(convert_lora, "--model", src, "--save_to", out, "--to", "kohya", "--arch", "sdxl") == 0
    assert sorted(load_file(out)) == [f"lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.{p}"
                                      for p in ("alpha", "lora_down.weight", "lora_up.weight")]


def test_refuses_lycoris_unless_dropped(tmp_path, kit, capsys):
    t = kit.random_lora("lora_keys_sd15", 2, count=2)
    t["lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a"] = torch.ones(2, 2)
    t["bundle_emb.tok.string_to_param.*"] = torch.ones(1, 768)
    src = kit.save(t, tmp_path / "l.safetensors")
    out = tmp_path / "p.safetensors"
    assert kit.run(convert_lora, "--model", src, "--save_to", out, "--to", "peft") == 2
    assert "cannot be converted" in capsys.readouterr().err and not out.exists()
    assert kit.run(convert_lora, "--model", src, "--save_to", out, "--to", "peft", "--drop_unsupported") == 0
    assert len(load_file(out)) == 4


def test_alpha_pattern_wins_over_lora_alpha():
    meta = json.loads(adapter_metadata({"text_encoder": [("text_model.encoder.layers.0.mlp.fc1", 4, 2.0),
                                                         ("text_model.encoder.layers.1.mlp.fc1", 4, 2.0),
                                                         ("text_model.encoder.layers.2.mlp.fc1", 8, 0.5)]}))
    assert meta["text_encoder.lora_alpha"] == 2.0 and meta["text_encoder.r"] == 4
    assert meta["text_encoder.alpha_pattern"] == {"encoder.layers.2.mlp.fc1": 0.5}
    assert meta["text_encoder.rank_pattern"] == {"encoder.layers.2.mlp.fc1": 8}
    assert alpha_from_metadata(meta, "text_encoder", "text_model.encoder.layers.2.mlp.fc1", 8) == 0.5
    assert alpha_from_metadata(meta, "text_encoder", "text_model.encoder.layers.0.mlp.fc1", 4) == 2.0
    assert alpha_from_metadata({}, "unet", "x", 4) == 4.0
