"""On CUDA, the run record, the end summary and the report carry the peak VRAM, and the first steps are timed
after a device synchronisation (skipped without a CUDA GPU, like the rest of tests/gpu)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_peak_vram_in_record_summary_and_report(train_sdxl, capsys):
    run = train_sdxl("--mixed_precision", "bf16", "--output_name", "v")
    out = capsys.readouterr().out
    record = json.loads((run.out / "v_run.json").read_text())
    peak = record["memory"]["peak_vram_bytes"]
    assert peak > 0 and record["timing"]["median_step_seconds"] > 0
    assert "peak VRAM" in out[out.index("summary:"):]
    assert "<div>peak VRAM<b>" in (run.out / "v_report.html").read_text()
