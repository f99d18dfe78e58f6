"""extract_lora: merged-then-extracted LoRA reproduces the delta; TE min_diff; svd_merge_lora end to end."""

from __future__ import annotations

import json

import pytest
import torch

from library.lora.file import read_lora
from library.lora.algebra import delta_weight
from library.lora.svd import svd_merge_factors
from library.io.safetensors_io import read_header, read_metadata
from tools import extract_lora, merge_lora, svd_merge_lora


def _shapes(path):
    return {k: tuple(v["shape"]) for k, v in read_header(path)[0].items()}


def _delta(mod):
    down, up, alpha = mod
    return delta_weight(up.double(), down.double(), (alpha or down.shape[0]) / down.shape[0])


@pytest.mark.parametrize("arch,family,with_te", [("sdxl", "sdxl", True), ("sd15", "sd1", False)])
def test_merged_then_extracted_reproduces_delta(tmp_path, kit, tiny_ckpt, arch, family, with_te):
    ckpt = tiny_ckpt(arch)
    lora = kit.lora_for_checkpoint(_shapes(ckpt), family, 2, seed=3)
    if not with_te:
        lora = {k: v for k, v in lora.items() if k.startswith("lora_unet_")}
    src = kit.save(lora, tmp_path / "l.safetensors")
    tuned = tmp_path / "tuned.safetensors"
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", src, "--ratios", 1.0, "--save_to", tuned) == 0
    out = tmp_path / "x.safetensors"
    assert kit.run(extract_lora, "--model_org", ckpt, "--model_tuned", tuned, "--save_to", out, "--dim", 4,
                   "--conv_dim", 4, "--clamp_quantile", 1.0, "--min_diff", 0.001) == 0
    want, got = read_lora(src).modules, read_lora(out).modules
    assert set(got) == set(want)
    for name, mod in got.items():
        assert mod[0].shape[0] == 4 and mod[2] == 4.0 and mod[0].shape[1:] == want[name][0].shape[1:]
        ref = _delta(want[name])
        assert (_delta(mod) - ref).norm() / ref.norm() < 1e-4, name
    meta = read_metadata(out)
    assert meta["ss_network_dim"] == "4" and json.loads(meta["ss_network_args"])["conv_dim"] == 4
    assert meta["ss_base_model_version"] == {"sdxl": "sdxl_base_v1-0", "sd1": "sd_v1"}[family]


def test_text_encoders_skipped_below_min_diff_and_family_errors(tmp_path, kit, tiny_ckpt, capsys):
    ckpt = tiny_ckpt("sdxl")
    lora = {k: v for k, v in kit.lora_for_checkpoint(_shapes(ckpt), "sdxl", 2).items() if "attn2" in k}
    tuned = tmp_path / "t.safetensors"
    kit.run(merge_lora, "--sd_model", ckpt, "--models", kit.save(lora, tmp_path / "l.safetensors"), "--ratios", 1,
            "--save_to", tuned)
    out = tmp_path / "x.safetensors"
    assert kit.run(extract_lora, "--model_org", ckpt, "--model_tuned", tuned, "--save_to", out, "--dim", 2) == 0
    names = set(read_lora(out).modules)
    assert names and all(n.startswith("lora_unet_") for n in names) and not any("in_layers" in n for n in names)
    assert "skipping text encoders" in capsys.readouterr().out
    assert kit.run(extract_lora, "--model_org", ckpt, "--model_tuned", tiny_ckpt("sd15"), "--save_to",
                   tmp_path / "y.safetensors") == 2
    assert "is sd1, but" in capsys.readouterr().err
    assert kit.run(extract_lora, "--model_org", ckpt, "--model_tuned", tuned, "--save_to", tmp_path / "z.safetensors",
                   "--v2") == 2
    assert "this checkpoint is sdxl" in capsys.readouterr().err


def test_svd_merge_tool_matches_library_and_self_merge(tmp_path, kit):
    a = kit.save(kit.random_lora("lora_keys_sdxl_conv", 4, count=12, alpha=2.0, seed=1), tmp_path / "a.safetensors")
    b = kit.save(kit.random_lora("lora_keys_sdxl_conv", 4, count=12, alpha=4.0, seed=2), tmp_path / "b.safetensors")
    out = tmp_path / "s.safetensors"
    assert kit.run(svd_merge_lora, "--models", a, b, "--ratios", 0.8, 0.4, "--new_rank", 6, "--new_conv_rank", 3,
                   "--save_to", out) == 0
    la, lb, merged = read_lora(a), read_lora(b), read_lora(out)
    for name, (down, up, alpha) in merged.modules.items():
        kxk = down.dim() == 4 and down.shape[2] == 3
        items = [(*la.modules[name][:3], 0.8), (*lb.modules[name][:3], 0.4)]
        ref_down, ref_up = svd_merge_factors(items, 3 if kxk else 6)
        assert down.shape[0] == (3 if kxk else 6) and alpha == down.shape[0]
        assert torch.allclose(down, ref_down, atol=1e-6) and torch.allclose(up, ref_up, atol=1e-6)
    meta = read_metadata(out)
    assert meta["ss_network_dim"] == "6" and json.loads(meta["ss_network_args"]) == {"conv_dim": 3, "conv_alpha": 3}
    assert meta["modelspec.merged_from"] == "a, b"
    # self merge at 0.5/0.5 without the clamp reproduces the input product exactly (rank kept)
    for name, mod in list(la.modules.items())[:4]:
        d, u = svd_merge_factors([(*mod, 0.5), (*mod, 0.5)], 4, clamp=None)
        ref = _delta(mod)
        assert (delta_weight(u.double(), d.double()) - ref).norm() / ref.norm() < 1e-5
