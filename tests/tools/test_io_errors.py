"""Input handling shared by the tools: .ckpt inputs, pickled objects, folders, incomplete modules."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import load_file

from library.errors import UserError
from library.lora.file import group_modules, load_tensors
from tools import check_lora_weights, merge_lora, resize_lora


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UserError, match="weights-only"):
        load_tensors(path)


def test_ckpt_base_merges_like_safetensors(tmp_path, kit, tiny_ckpt, capsys):
    ckpt = tiny_ckpt("sd15")
    sd = load_file(ckpt)
    torch.save({"state_dict": sd, "global_step": 3}, tmp_path / "base.ckpt")
    lora = {k: v for k, v in kit.lora_for_checkpoint({k: tuple(v.shape) for k, v in sd.items()}, "sd1", 2).items()
            if "attn2" in k}
    src = kit.save(lora, tmp_path / "l.safetensors")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert kit.run(merge_lora, "--sd_model", ckpt, "--models", src, "--ratios", 0.5, "--save_to", a) == 0
    assert kit.run(merge_lora, "--sd_model", tmp_path / "base.ckpt", "--models", src, "--ratios", 0.5, "--save_to", b) == 0
    assert "cannot be streamed" in capsys.readouterr().out
    ta, tb = load_file(a), load_file(b)
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert kit.run(merge_lora, "--sd_model", tmp_path, "--models", src, "--ratios", 1, "--save_to", tmp_path / "c.safetensors") == 2
    assert "diffusers folders are not supported" in capsys.readouterr().err


def test_incomplete_module_and_resize_ckpt_output(tmp_path, kit):
    with pytest.raises(UserError, match="only one of its two LoRA factors"):
        group_modules({"lora_unet_x.lora_down.weight": torch.ones(2, 3)}, "f")
    src = kit.save(kit.random_lora("lora_keys_sd15", 4, count=3), tmp_path / "l.safetensors")
    out = tmp_path / "r.pt"
    assert kit.run(resize_lora, "--model", src, "--save_to", out, "--new_rank", 2, "--save_precision", "fp16") == 0
    sd = torch.load(out, weights_only=True)
    assert len(sd) == 9 and all(v.dtype == torch.float16 for v in sd.values())
    assert kit.run(check_lora_weights, out) == 0
