"""tools/run_report.py and the report's readers: sample names, the LoRA picked, block norms, errors."""

from __future__ import annotations

import json

import pytest
import torch

from library.io.safetensors_io import save_lora_file
from library.lora.algebra import delta_weight, lora_scale
from library.report.lora_stats import block_label, block_norms, module_norm
from library.report.sources import SAMPLE_RE, collect, newest_lora
from tools.run_report import main as run_report


@pytest.mark.parametrize("name, parts", [
    ("n_e000003_01_20260101120000_42.png", ("n", "000003", None, "01")),
    ("my_lora_000250_00_20260101120000.png", ("my_lora", None, "000250", "00")),
    ("e000001_02_20260101120000.png", (None, "000001", None, "02")),  # no --output_name
])
def test_sample_file_names(name, parts):
    m = SAMPLE_RE.match(name)
    assert (m.group("name"), m.group("epoch"), m.group("step"), m.group("index")) == parts


def test_samples_without_a_run_record_come_from_their_names(tmp_path):
    from PIL import Image

    (tmp_path / "sample").mkdir()
    for name in ("n_000004_00_20260101120000.png", "n_e000001_01_20260101120000.png", "other_000004_00_20260101.png",
                 "e000001_00_20260101120000.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "sample" / name)
    found = collect(tmp_path, "n").samples
    assert sorted((s.index, s.step, s.epoch) for s in found) == [(0, 4, None), (1, None, 1)]
    assert [s.path.name for s in collect(tmp_path, "last").samples] == ["e000001_00_20260101120000.png"]


def test_newest_lora_prefers_the_final_file(tmp_path):
    for name in ("n-000001.safetensors", "n-step00000010.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert newest_lora(tmp_path, "n").name == "n-step00000010.safetensors"
    (tmp_path / "n.safetensors").write_bytes(b"x")
    assert newest_lora(tmp_path, "n").name == "n.safetensors"


def test_module_norm_equals_the_dense_delta():
    gen = torch.Generator().manual_seed(0)
    for down, up in [(torch.randn(4, 32, generator=gen), torch.randn(16, 4, generator=gen)),
                     (torch.randn(4, 8, 3, 3, generator=gen), torch.randn(12, 4, 1, 1, generator=gen))]:
        dense = delta_weight(up, down, lora_scale(2.0, 4)).norm()
        assert module_norm(down, up, 2.0) == pytest.approx(float(dense), rel=1e-5)


def test_block_labels_and_norms():
    assert block_label("lora_te1_text_model_encoder_layers_0_mlp_fc1") == "TE1"
    assert block_label("lora_te_text_model_encoder_layers_0_mlp_fc1") == "TE"
    assert block_label("lora_unet_input_blocks_4_1_proj_in") == "IN04"
    assert block_label("lora_unet_middle_block_1_proj_in") == "MID"
    assert block_label("lora_unet_output_blocks_2_1_proj_out") == "OUT02"
    assert block_label("lora_unet_down_blocks_1_attentions_0_proj_in") == "IN04"  # SD1: down 1, attention 0
    assert block_label("lora_unet_up_blocks_3_attentions_2_proj_out") == "OUT11"
    one = (torch.ones(1, 2), torch.ones(2, 1), 1.0)  # ‖ΔW‖ = 2
    blocks = block_norms({"lora_unet_output_blocks_0_1_a": one, "lora_te2_x": one, "lora_unet_input_blocks_4_1_a": one,
                          "lora_unet_input_blocks_4_1_b": one})
    assert [(b, round(n, 6), c) for b, n, c in blocks] == [("TE2", 2.0, 1), ("IN04", round(8 ** 0.5, 6), 2),
                                                          ("OUT00", 2.0, 1)]


def _run_folder(tmp_path, name="n"):
    (tmp_path / f"{name}_run.json").write_text(json.dumps({"output_name": name, "status": "stopped", "samples": [],
                                                           "files": [], "plan": {"lines": ["plan:"]}}))
    save_lora_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.ones(2, 4),
                    "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.ones(4, 2)},
                   tmp_path / f"{name}-step00000002.safetensors", {"ss_network_dim": "2"})


def test_tool_writes_the_report(tmp_path, capsys):
    _run_folder(tmp_path)
    assert run_report([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'n_report.html'}"
    html = (tmp_path / "n_report.html").read_text()
    assert "n-step00000002.safetensors" in html and 'id="block-norms"' in html and "No loss values yet" in html


@pytest.mark.parametrize("setup, args, message", [
    (None, ["missing"], "missing: not a folder; pass the run's --output_dir"),
    ("none", [], "no run found (no *_run.json or *_dataset_report.json); pass the --output_dir of a training run"),
    ("two", [], "2 runs (a, b); choose one with --output_name"),
    ("two", ["--output_name", "c"], "no run named 'c' (runs found: a, b)"),
])
def test_tool_errors_are_one_line(tmp_path, capsys, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    if setup == "two":
        _run_folder(tmp_path, "a")
        _run_folder(tmp_path, "b")
    folder = [] if args[:1] == ["missing"] else [str(tmp_path)]
    assert run_report(folder + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and err[0].endswith(message)
