"""merge_lora: into a tiny single-file checkpoint (streamed), and LoRA + LoRA (kohya / exact concat)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.lora.convert import checkpoint_targets
from library.lora.file import read_lora
from library.lora.algebra import delta_weight
from library.io.safetensors_io import read_header, read_metadata
from tools import merge_lora


def _shapes(path):
    return {k: tuple(v["shape"]) for k, v in read_header(path)[0].items()}


def _expected(base, loras_ratios, shapes, family):
    targets = checkpoint_targets(shapes, family, conv=True)
    out = {k: v.clone() for k, v in base.items()}
    for tensors, ratio in loras_ratios:
        for key in tensors:
            if not key.endswith(".lora_down.weight"):
                continue
            name = key[: -len(".lora_down.weight")]
            down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
            alpha = float(tensors[f"{name}.alpha"])
            ck, chunk = targets[name]
            d = delta_weight(up.double(), down.double(), alpha / down.shape[0]) * ratio
            rows = slice(None) if chunk is None else slice(chunk * shapes[ck][0] // 3, (chunk + 1) * shapes[ck][0] // 3)
            out[ck] = out[ck].double()
            out[ck][rows] += d.reshape(out[ck][rows].shape)
    return out


@pytest.mark.parametrize("arch,family", [("sdxl", "sdxl"), ("sd15", "sd1"), ("sd2", "sd2")])
def test_merge_into_checkpoint_equals_weight_plus_deltas(tmp_path, kit, tiny_ckpt, arch, family):
    ckpt = tiny_ckpt(arch)
    shapes = _shapes(ckpt)
    l1 = kit.lora_for_checkpoint(shapes, family, 2, seed=1)
    l2 = {k: v for k, v in kit.lora_for_checkpoint(shapes, family, 3, seed=2).items() if "_te" in k or "attn1" in k}
    p1, p2 = kit.save(l1, tmp_path / "a.safetensors"), kit.save(l2, tmp_path / "b.safetensors")
    out = tmp_path / "merged.safetensors"
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", p1, p2, "--ratios", 0.7, -0.5, "--save_to", out) == 0
    base, merged = load_file(ckpt), load_file(out)
    expected = _expected(base, [(l1, 0.7), (l2, -0.5)], shapes, family)
    assert set(merged) == set(base)
    changed = 0
    for key, want in expected.items():
        got = merged[key]
        assert got.dtype == base[key].dtype and got.shape == base[key].shape
        if torch.equal(want.to(got.dtype), base[key]):
            assert torch.equal(got, base[key]), key
        else:
            changed += 1
            assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5), key
    assert changed == len({t[0] for t in checkpoint_targets(shapes, family).values()})
    meta = read_metadata(out)
    assert meta["sd_train.model_config"] == read_metadata(ckpt)["sd_train.model_config"]
    assert meta["modelspec.merged_from"] == f"tiny_{arch}, a, b"


def test_te2_in_proj_rows_and_byte_layout(tmp_path, kit, tiny_ckpt):
    ckpt = tiny_ckpt("sdxl")
    shapes = _shapes(ckpt)
    key = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    l1 = {k: v for k, v in kit.lora_for_checkpoint(shapes, "sdxl", 2).items() if "te2_text_model_encoder_layers_0_self_attn_k" in k}
    out = tmp_path / "m.safetensors"
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", kit.save(l1, tmp_path / "k.safetensors"),
                   "--ratios", 1.0, "--save_to", out, "--save_precision", "fp16") == 0
    base, merged = load_file(ckpt), load_file(out)
    d = shapes[key][0] // 3
    diff = merged[key].float() - base[key].half().float()
    assert diff[:d].abs().max() == 0 and diff[2 * d:].abs().max() == 0 and diff[d:2 * d].abs().max() > 0
    assert all(v.dtype == torch.float16 for v in merged.values() if v.is_floating_point())
    # the streamed file has exactly the layout of save_file (metadata key order aside, see safetensors_stream)
    save_file(merged, tmp_path / "ref.safetensors", metadata=read_metadata(out))
    a, b = (tmp_path / "ref.safetensors").read_bytes(), out.read_bytes()
    (na,), (nb,) = struct.unpack("<Q", a[:8]), struct.unpack("<Q", b[:8])
    assert na == nb and a[8 + na:] == b[8 + nb:] and json.loads(a[8:8 + na]) == json.loads(b[8:8 + nb])


def test_wrong_architecture_and_overwrite(tmp_path, kit, tiny_ckpt, capsys):
    ckpt = tiny_ckpt("sdxl")
    sd15 = kit.save(kit.random_lora("lora_keys_sd15", 2, select=lambda n: n.endswith(("layers_0_mlp_fc1", "0_proj_in"))),
                    tmp_path / "sd15.safetensors")
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", sd15, "--ratios", 1, "--save_to", tmp_path / "o.safetensors") == 2
    err = capsys.readouterr().err
    assert "the LoRA does not fit the sdxl checkpoint" in err and "looks like sd1" in err
    assert not (tmp_path / "o.safetensors").exists()
    assert kit.run(merge_lora, "--models", sd15, "--ratios", 1, 2, "--save_to", tmp_path / "o.safetensors") == 2
    assert "one ratio per model" in capsys.readouterr().err
    assert kit.run(merge_lora, "--models", sd15, "--ratios", 1, "--save_to", sd15) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def _sum_of_deltas(files_ratios):
    total = {}
    for path, ratio in files_ratios:
        for name, (down, up, alpha) in read_lora(path).modules.items():
            d = delta_weight(up.double(), down.double(), alpha / down.shape[0]) * ratio
            total[name] = total.get(name, 0) + d
    return total


def test_concat_is_exact_sum_with_different_ranks_and_alphas(tmp_path, kit):
    a = kit.save(kit.random_lora("lora_keys_sdxl_conv", 4, count=20, alpha=2.0, seed=1, max_elems=1280 * 2880), tmp_path / "a.safetensors")
    b = kit.save(kit.random_lora("lora_keys_sdxl_conv", 8, count=20, alpha=16.0, seed=2, max_elems=1280 * 2880), tmp_path / "b.safetensors")
    for shuffle in ([], ["--shuffle"]):
        out = tmp_path / f"c{len(shuffle)}.safetensors"
        assert kit.run(merge_lora, "--models", a, b, "--ratios", 0.6, -1.3, "--concat", "--save_to", out, *shuffle) == 0
        merged = read_lora(out)
        want = _sum_of_deltas([(a, 0.6), (b, -1.3)])
        for name, (down, up, alpha) in merged.modules.items():
            assert down.shape[0] == 12 and alpha == 12.0
            got = delta_weight(up.double(), down.double(), 1.0)
            assert (got - want[name]).norm() / want[name].norm() < 1e-5, name
    meta = read_metadata(out)
    assert meta["ss_network_dim"] == "12" and meta["ss_network_module"] == "networks.lora"


def test_self_concat_half_half_equals_input(tmp_path, kit):
    a = kit.save(kit.random_lora("lora_keys_sd15_conv", 4, count=10, alpha=1.0), tmp_path / "a.safetensors")
    out = tmp_path / "c.safetensors"
    assert kit.run(merge_lora, "--models", a, a, "--ratios", 0.5, 0.5, "--concat", "--save_to", out) == 0
    want, merged = _sum_of_deltas([(a, 1.0)]), read_lora(out)
    for name, (down, up, alpha) in merged.modules.items():
        assert (delta_weight(up.double(), down.double(), alpha / down.shape[0]) - want[name]).norm() < 1e-5 * want[name].norm()


def test_default_merge_is_kohyas_formula(tmp_path, kit, capsys):
    ta = kit.random_lora("lora_keys_sd15", 4, count=3, alpha=1.0, seed=1)
    tb = kit.random_lora("lora_keys_sd15", 4, count=3, alpha=4.0, seed=2)
    a, b = kit.save(ta, tmp_path / "a.safetensors"), kit.save(tb, tmp_path / "b.safetensors")
    out = tmp_path / "k.safetensors"
    assert kit.run(merge_lora, "--models", a, b, "--ratios", 1.0, -0.5, "--save_to", out) == 0
    assert "approximation" in capsys.readouterr().out
    merged = read_lora(out)
    s = 2.0 * -0.5  # sqrt(4 / 1) * ratio
    for name, (down, up, alpha) in merged.modules.items():
        assert alpha == 1.0
        assert torch.allclose(down, ta[f"{name}.lora_down.weight"] + tb[f"{name}.lora_down.weight"] * s, atol=1e-6)
        assert torch.allclose(up, ta[f"{name}.lora_up.weight"] + tb[f"{name}.lora_up.weight"] * abs(s), atol=1e-6)
