"""show_metadata and check_lora_weights; generated name tables against the golden key lists."""

from __future__ import annotations

import json

import pytest
import torch

from library.lora.convert import checkpoint_targets
from tools import check_lora_weights, show_metadata


@pytest.mark.parametrize("golden,family", [("lora_keys_sd15_conv", "sd1"), ("lora_keys_sd2", "sd2"),
                                           ("lora_keys_sdxl_conv", "sdxl")])
def test_generated_names_cover_golden_lists_and_fit(kit, golden, family):
    names = set(kit.module_shapes(golden))
    assert names <= check_lora_weights.family_names(family)
    assert check_lora_weights.best_fit(names) == (family, [])


@pytest.mark.parametrize("ckpt,family,lora", [("sd15_ldm_keys", "sd1", "lora_keys_sd15"),
                                              ("sdxl_base_ldm_keys", "sdxl", "lora_keys_sdxl")])
def test_checkpoint_targets_equal_golden_module_sets(kit, ckpt, family, lora):
    shapes = kit.golden(ckpt)
    assert set(checkpoint_targets(shapes, family, conv=False)) == set(kit.module_shapes(lora))
    assert set(checkpoint_targets(shapes, family, conv=True)) == set(kit.module_shapes(lora + "_conv"))


def test_show_metadata_summary(tmp_path, kit, capsys):
    t = kit.random_lora("lora_keys_sdxl", 4, count=12, alpha=2.0)
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": json.dumps(
        {"10_a": {"cat": 3, "dog": 1}, "5_b": {"cat": 2, "tree": 4}})}
    path = kit.save(t, tmp_path / "l.safetensors", meta)
    assert kit.run(show_metadata, "--model", path, "--top", 2) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[: out.index("}\n") + 1])
    assert list(printed) == sorted(printed) and printed["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "family: sdxl" in out and "ranks: {\"4\": 12}" in out and "alphas: {\"2.0\": 12}" in out
    assert "sshs_model_hash: matches the data section" in out
    assert "top 2 tags: cat (5), tree (4)" in out and "dtypes: {\"F32\": 36}" in out
    lyco = kit.save(t, tmp_path / "y.safetensors")
    from library.io.safetensors_io import load_file, save_lora_file

    tensors, m = load_file(lyco)
    save_lora_file(tensors, tmp_path / "z.safetensors", {**m, "sshs_model_hash": "0xabc"}, add_hashes=False)
    kit.run(show_metadata, "--model", tmp_path / "z.safetensors")
    assert "LyCORIS hash" in capsys.readouterr().out
    assert kit.run(show_metadata, "--model", tmp_path / "missing.safetensors") == 2


def test_check_lora_weights_reports_problems(tmp_path, kit, capsys):
    t = kit.random_lora("lora_keys_sd15", 2, count=6)
    ups = [k for k in t if k.endswith("lora_up.weight")]
    t[ups[0]] = torch.zeros_like(t[ups[0]])
    t["lora_unet_not_a_module.lora_down.weight"] = torch.ones(2, 8)
    t["lora_unet_not_a_module.lora_up.weight"] = torch.ones(8, 2)
    path = kit.save(t, tmp_path / "l.safetensors")
    assert kit.run(check_lora_weights, path) == 0
    out = capsys.readouterr().out
    assert "number of LoRA modules: 14" in out
    assert "architecture: sd1 (6/7 module names match)" in out
    assert "matches no sd1 module: lora_unet_not_a_module" in out
    assert f"untrained modules (all-zero up): 1: {ups[0][: -len('.lora_up.weight')]}" in out
    t[ups[1]][0, 0] = float("inf")
    bad = kit.save(t, tmp_path / "bad.safetensors")
    assert kit.run(check_lora_weights, bad, "-s") == 1
    assert f"non-finite tensors: 1: {ups[1]}" in capsys.readouterr().out
