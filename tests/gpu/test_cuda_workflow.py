"""CUDA runs of the workflow additions: EMA kept in RAM while the network trains on the GPU (``--ema_on_cpu``)
and the text-encoder stop under bf16. Skipped without CUDA (the module's one skip condition)."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import load_file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_ema_on_cpu_with_full_bf16(train_sdxl):
    """Shadow weights stay float32 in RAM; decay 0 makes them the trained bf16 weights exactly."""
    run = train_sdxl("--mixed_precision", "bf16", "--full_bf16", "--save_precision", "float", "--ema",
                     "--ema_on_cpu", "--ema_decay", "0", "--ema_save_as", "both")
    ema = run.trainer.ema
    assert {s.device.type for s in ema.shadow} == {"cpu"} and {s.dtype for s in ema.shadow} == {torch.float32}
    assert {p.device.type for p in ema.params} == {"cuda"} and {p.dtype for p in ema.params} == {torch.bfloat16}
    raw, ema_file = load_file(run.out / "last.safetensors")[0], load_file(run.out / "last-ema.safetensors")[0]
    assert raw.keys() == ema_file.keys() and all(torch.equal(raw[k], ema_file[k]) for k in raw)


def test_ema_on_gpu_decays_toward_the_trained_weights(train_sdxl):
    run = train_sdxl("--mixed_precision", "bf16", "--ema", "--ema_decay", "0.5", "--ema_save_as", "both")
    assert {s.device.type for s in run.trainer.ema.shadow} == {"cuda"}
    raw, ema_file = load_file(run.out / "last.safetensors")[0], load_file(run.out / "last-ema.safetensors")[0]
    assert any(not torch.equal(raw[k], ema_file[k]) for k in raw)


def test_text_encoder_stop_under_bf16_is_bitwise(train_sdxl):
    run = train_sdxl("--mixed_precision", "bf16", "--stop_text_encoder_training", "1", "--save_every_n_steps", "1")
    first = load_file(run.out / "at-step00000001.safetensors")[0]
    te = [k for k in first if k.startswith("lora_te")]
    assert te and all(torch.equal(first[k], run.weights[k]) for k in te)
    assert any(not torch.equal(first[k], run.weights[k]) for k in first if k.startswith("lora_unet"))
    assert run.meta["ss_stop_text_encoder_training"] == "1"
