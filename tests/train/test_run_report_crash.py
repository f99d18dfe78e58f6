"""A run that crashes keeps its record and report, and ``run_report`` rebuilds the page from its files."""

from __future__ import annotations

import json

import pytest

from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.trainer import Trainer
from tools.run_report import main as run_report


def test_crashed_run_keeps_record_and_report(assets, tmp_path, monkeypatch):
    ckpt, toml = assets
    real_step = Trainer._optimizer_step
    calls = []

    def failing_step(self, window, batch):
        calls.append(1)
        if len(calls) == 12:
            raise RuntimeError("simulated crash in step 12")
        real_step(self, window, batch)

    monkeypatch.setattr(Trainer, "_optimizer_step", failing_step)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        sdxl_main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
                   "--output_name", "c", "--network_module", "networks.lora", "--network_dim", "4",
                   "--network_train_unet_only", "--max_train_steps", "14", "--save_every_n_steps", "5",
                   "--max_data_loader_n_workers", "0", "--logging_dir", str(tmp_path / "logs")])
    record = json.loads((out / "c_run.json").read_text())
    assert record["status"] == "stopped" and record["steps_done"] == 11
    assert [f["path"] for f in record["files"]] == ["c_dataset_report.json", "c-step00000005.safetensors",
                                                    "c-step00000010.safetensors"]
    assert 'id="loss-chart"' in (out / "c_report.html").read_text()  # rebuilt by the cleanup of the crash
    # the curves end at the last step whose losses were read before the crash
    (out / "c_report.html").unlink()
    assert run_report([str(out)]) == 0
    html = (out / "c_report.html").read_text()
    assert "<b>stopped</b>" in html and "<b>11 / 14</b>" in html
    assert '<svg id="loss-chart"' in html and '<svg id="lr-chart"' in html
    assert "c-step00000010.safetensors: " in html  # the LoRA section reads the newest file
