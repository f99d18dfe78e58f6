"""resize_lora: lossless at the same rank, dense-SVD reference at lower rank, dynamic ranks, metadata, errors."""

from __future__ import annotations

import pytest
import torch

from library.lora.file import read_lora
from library.io.safetensors_io import data_section_sha256, read_metadata
from tools import resize_lora


def _product(mod):
    down, up, alpha = mod
    return (up.reshape(up.shape[0], -1).double() @ down.reshape(down.shape[0], -1).double()) * alpha / down.shape[0]


def test_same_rank_is_lossless_on_realistic_shapes(tmp_path, kit):
    src = kit.save(kit.random_lora("lora_keys_sdxl_conv", 8, count=24, alpha=4.0), tmp_path / "in.safetensors")
    assert kit.run(resize_lora, "--model", src, "--save_to", tmp_path / "out.safetensors", "--new_rank", 8,
                   "--new_conv_rank", 8) == 0
    a, b = read_lora(src), read_lora(tmp_path / "out.safetensors")
    assert set(a.modules) == set(b.modules) and any(m[0].dim() == 4 and m[0].shape[2] == 3 for m in b.modules.values())
    for name, mod in a.modules.items():
        new = b.modules[name]
        assert new[0].shape == mod[0].shape and new[1].shape == mod[1].shape
        assert new[2] / new[0].shape[0] == pytest.approx(mod[2] / mod[0].shape[0])
        ref = _product(mod)
        assert (_product(new) - ref).norm() / ref.norm() < 1e-5, name


def test_lower_rank_matches_dense_svd_and_metadata(tmp_path, kit):
    tensors = kit.random_lora("lora_keys_sd15_conv", 16, count=12, alpha=8.0, max_elems=640 * 5760)
    src = kit.save(tensors, tmp_path / "in.safetensors", {"ss_network_dim": "16", "ss_network_alpha": "8.0",
                                                          "ss_training_comment": "hello", "ss_output_name": "x"})
    out = tmp_path / "out.safetensors"
    assert kit.run(resize_lora, "--model", src, "--save_to", out, "--new_rank", 4, "--save_precision", "float") == 0
    a, b = read_lora(src), read_lora(out)
    for name, mod in a.modules.items():
        dense = _product((mod[0], mod[1], mod[0].shape[0]))  # unscaled W = up @ down
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        ref = (u[:, :4] * s[:4]) @ vh[:4] * (8.0 / 16)
        assert b.modules[name][0].shape[0] == 4 and b.modules[name][2] == pytest.approx(2.0)
        assert (_product(b.modules[name]) - ref).norm() / ref.norm() < 1e-4, name
    meta = read_metadata(out)
    assert meta["ss_training_comment"] == "dimension is resized from 16 to 4; hello"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_output_name"] == "x" and meta["modelspec.title"] == "out"
    assert meta["sshs_model_hash"] == data_section_sha256(out)


def test_dynamic_sv_ratio_picks_rank_from_spectrum(tmp_path, kit):
    # up @ down has singular values exactly [8, 4, 1, 0.5] (orthonormal factors).
    q1, _ = torch.linalg.qr(torch.randn(64, 4, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(32, 4, dtype=torch.float64))
    up = (q1 * torch.tensor([8.0, 4.0, 1.0, 0.5], dtype=torch.float64)).float()
    t = {"lora_unet_m.lora_down.weight": q2.T.float().contiguous(), "lora_unet_m.lora_up.weight": up,
         "lora_unet_m.alpha": torch.tensor(4.0)}
    src = kit.save(t, tmp_path / "in.safetensors")
    for method, param, rank in (("sv_ratio", 5.0, 3), ("sv_cumulative", 0.85, 3), ("sv_cumulative", 0.9, 4),
                                ("sv_fro", 0.99, 3),
                                ("sv_ratio", 1.5, 2)):
        out = tmp_path / f"{method}{param}.safetensors"
        assert kit.run(resize_lora, "--model", src, "--save_to", out, "--new_rank", 4, "--dynamic_method", method,
                       "--dynamic_param", param) == 0
        mod = read_lora(out).modules["lora_unet_m"]
        assert mod[0].shape[0] == rank and mod[2] == pytest.approx(float(rank)), (method, param)
        meta = read_metadata(out)
        assert meta["ss_network_dim"] == "Dynamic"
        assert meta["ss_training_comment"].startswith(f"Dynamic resize with {method}: {param} from 4; ")


def test_verbose_report_and_extras_copied(tmp_path, kit, capsys):
    t = kit.random_lora("lora_keys_sd15", 4, count=3)
    t["bundle_emb.tok.string_to_param.*"] = torch.ones(2, 768)
    src = kit.save(t, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert kit.run(resize_lora, "--model", src, "--save_to", out, "--new_rank", 2, "--verbose") == 0
    text = capsys.readouterr().out
    assert "fro retained:" in text and "Average Frobenius norm retention:" in text
    assert torch.equal(read_lora(out).extras["bundle_emb.tok.string_to_param.*"], torch.ones(2, 768))


def test_errors_are_one_line(tmp_path, kit, capsys):
    src = kit.save(kit.random_lora("lora_keys_sd15", 4, count=2), tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"x")
    assert kit.run(resize_lora, "--model", src, "--save_to", out) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert kit.run(resize_lora, "--model", tmp_path / "missing.safetensors", "--save_to", tmp_path / "o.safetensors") == 2
    assert "file not found" in capsys.readouterr().err
    assert kit.run(resize_lora, "--model", src, "--save_to", tmp_path / "o.safetensors", "--dynamic_method", "sv_fro") == 2
    assert "needs --dynamic_param" in capsys.readouterr().err
    bad = kit.random_lora("lora_keys_sd15", 4, count=2)
    next(v for k, v in bad.items() if k.endswith("lora_up.weight"))[0, 0] = float("nan")
    kit.save(bad, tmp_path / "nan.safetensors")
    assert kit.run(resize_lora, "--model", tmp_path / "nan.safetensors", "--save_to", tmp_path / "o.safetensors") == 2
    assert "NaN or Inf" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()


def test_peft_named_input_keeps_its_layout(tmp_path, kit):
    g = torch.Generator().manual_seed(1)
    t = {"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.randn(8, 64, generator=g),
         "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight": torch.randn(64, 8, generator=g)}
    src = kit.save(t, tmp_path / "p.safetensors", {"format": "pt"})
    out = tmp_path / "o.safetensors"
    assert kit.run(resize_lora, "--model", src, "--save_to", out, "--new_rank", 8) == 0
    from safetensors.torch import load_file

    got = load_file(out)
    assert sorted(got) == sorted(t)  # no alpha key is added to PEFT-named modules
    a, b = "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight", "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight"
    assert torch.allclose(got[b] @ got[a], t[b] @ t[a], atol=1e-4)
