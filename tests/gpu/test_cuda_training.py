"""CUDA training runs of the tiny SDXL model: precision modes, xformers, 8-bit optimizers, fp8, resume, sampling.

These tests need a CUDA GPU and are NOT part of the CPU CI's meaning of green: on a machine without CUDA
every test here is skipped (the module's one skip condition), so a green CPU run says nothing about them.
Run them on a CUDA machine with ``python -m pytest -q tests/gpu``. Beyond that condition, only the xformers
test and the bitsandbytes tests skip, when their optional package cannot be imported.

Each run trains UNet + text-encoder LoRA rank 4 for 3 steps (see ``conftest.base_flags``) and checks
concrete results: finite weights, the key set of a CPU run, saved dtypes per ``--save_precision``, the
network's parameter dtype and device, and that training moved the zero-initialised ``lora_up`` weights.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _dtypes(weights: dict) -> set:
    return {v.dtype for v in weights.values()}


def _network_params(run) -> list[torch.nn.Parameter]:
    return list(run.trainer.host.network.parameters())


def _check_common(run, cpu_reference_keys, lora_moved) -> None:
    """Keys equal the CPU run's; the UNet and both TE LoRAs moved; the network lives on the GPU; no NaN skips."""
    assert set(run.weights) == cpu_reference_keys
    assert lora_moved(run.weights)
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_"):
        assert lora_moved({k: v for k, v in run.weights.items() if k.startswith(prefix)}), prefix
    assert run.trainer.models.unet.device.type == "cuda"
    assert {p.device.type for p in _network_params(run)} == {"cuda"}
    assert run.trainer.guard.skipped_total == 0


def test_bf16_mixed_precision(train_sdxl, cpu_reference_keys, lora_moved):
    run = train_sdxl("--mixed_precision", "bf16", "--save_precision", "bf16")
    _check_common(run, cpu_reference_keys, lora_moved)
    t = run.trainer
    assert t.accelerator.scaler is None
    assert t.models.unet.dtype == torch.bfloat16
    assert {p.dtype for te in t.models.text_encoders for p in te.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in _network_params(run)} == {torch.float32}  # fp32 LoRA under bf16 autocast
    assert _dtypes(run.weights) == {torch.bfloat16}
    assert run.meta["ss_mixed_precision"] == "bf16"


def test_fp16_mixed_precision_uses_the_grad_scaler(train_sdxl, cpu_reference_keys, lora_moved):
    run = train_sdxl("--mixed_precision", "fp16", "--save_precision", "fp16")
    _check_common(run, cpu_reference_keys, lora_moved)  # a GradScaler overflow is not a NaN-guard skip
    scaler = run.trainer.accelerator.scaler
    assert scaler is not None and scaler.is_enabled()
    assert 0 < scaler.get_scale() <= 2.0**16  # starts at 65536; halves on each overflow
    assert run.trainer.models.unet.dtype == torch.float16
    assert {p.dtype for p in _network_params(run)} == {torch.float32}
    assert _dtypes(run.weights) == {torch.float16}


def test_full_bf16(train_sdxl, cpu_reference_keys, lora_moved):
    run = train_sdxl("--mixed_precision", "bf16", "--full_bf16")
    _check_common(run, cpu_reference_keys, lora_moved)
    assert {p.dtype for p in _network_params(run)} == {torch.bfloat16}
    state = next(iter(run.trainer.optimizer.optimizer.state.values()))
    assert state["exp_avg"].dtype == torch.bfloat16
    assert _dtypes(run.weights) == {torch.bfloat16}  # no --save_precision: saved as trained


def test_full_fp16(train_sdxl, cpu_reference_keys, lora_moved):
    # Lion: torch AdamW's eps 1e-8 is 0 in fp16, so the zero first gradient of lora_down gives 0/0 (as in kohya)
    run = train_sdxl("--mixed_precision", "fp16", "--full_fp16", "--save_precision", "float",
                     "--optimizer_type", "Lion", "--learning_rate", "1e-4")
    _check_common(run, cpu_reference_keys, lora_moved)  # GradScaler unscaled fp16 gradients
    assert run.trainer.accelerator.scaler is not None
    assert {p.dtype for p in _network_params(run)} == {torch.float16}
    assert _dtypes(run.weights) == {torch.float32}


def test_xformers_attention(train_sdxl, cpu_reference_keys, lora_moved, monkeypatch):
    xops = pytest.importorskip("xformers.ops")
    from library.models.sdxl_unet import CrossAttention

    calls = []
    original = xops.memory_efficient_attention
    monkeypatch.setattr(xops, "memory_efficient_attention",
                        lambda *a, **k: calls.append(a[0].dtype) or original(*a, **k))
    run = train_sdxl("--mixed_precision", "bf16", "--xformers")
    _check_common(run, cpu_reference_keys, lora_moved)
    backends = {m.attention_backend for m in run.trainer.models.unet.modules() if isinstance(m, CrossAttention)}
    assert backends == {"xformers"}
    assert calls and set(calls) == {torch.bfloat16}


@pytest.mark.parametrize("optimizer, lr", [("AdamW8bit", "1e-3"), ("Lion8bit", "1e-4")])
def test_bitsandbytes_8bit_optimizers(train_sdxl, cpu_reference_keys, lora_moved, optimizer, lr):
    pytest.importorskip("bitsandbytes")
    run = train_sdxl("--mixed_precision", "bf16", "--optimizer_type", optimizer, "--learning_rate", lr,
                     "--optimizer_args", "min_8bit_size=0", name=optimizer)
    _check_common(run, cpu_reference_keys, lora_moved)
    inner = run.trainer.optimizer.optimizer
    assert type(inner).__name__ == optimizer and type(inner).__module__.startswith("bitsandbytes")
    assert run.meta["ss_optimizer"].startswith("bitsandbytes.") and f".{optimizer}(" in run.meta["ss_optimizer"]
    states = list(inner.state.values())
    assert states and all(s["state1"].dtype == torch.uint8 for s in states)  # 8-bit state (min_8bit_size=0)


def test_fp8_base_with_bf16(train_sdxl, cpu_reference_keys, lora_moved):
    run = train_sdxl("--fp8_base", "--mixed_precision", "bf16")
    _check_common(run, cpu_reference_keys, lora_moved)
    unet_dtypes = {p.dtype for p in run.trainer.models.unet.parameters()}
    assert torch.float8_e4m3fn in unet_dtypes  # frozen base weights stored in fp8
    assert {p.dtype for p in _network_params(run)} == {torch.float32}
    assert run.meta["ss_fp8_base"] == "True"


def test_lowram_loads_on_the_gpu_and_no_half_vae_keeps_an_fp32_vae(train_sdxl, cpu_reference_keys, lora_moved,
                                                                     monkeypatch):
    from sd_train.families.base import ModelFamily

    devices = []
    original = ModelFamily.load
    monkeypatch.setattr(ModelFamily, "load",
                        lambda self, *a, **k: devices.append(k["device"]) or original(self, *a, **k))
    run = train_sdxl("--mixed_precision", "bf16", "--lowram", "--no_half_vae", "--cache_latents")
    _check_common(run, cpu_reference_keys, lora_moved)
    assert [torch.device(d).type for d in devices] == ["cuda"]
    assert {p.dtype for p in run.trainer.models.vae.parameters()} == {torch.float32}


_DETERMINISTIC_MAIN = (
    "import sys, torch\n"
    "torch.use_deterministic_algorithms(True)\n"
    "torch.backends.cudnn.deterministic = True\n"
    "torch.backends.cudnn.benchmark = False\n"
    "from sd_train.sdxl_train_network import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def test_resume_is_bit_identical_on_cuda(tmp_path, flags, run_script):
    """2 steps + resume + 2 steps == 4 steps, fp32 on CUDA.

    Each run is a fresh process with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read when cuBLAS starts),
    ``torch.use_deterministic_algorithms(True)``, ``torch.backends.cudnn.deterministic = True`` and
    ``cudnn.benchmark = False``: without them cuBLAS/cuDNN/SDPA kernels may reduce in a different order.
    """
    from library.io.safetensors_io import load_file

    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    common = ("--max_train_steps", "4", "--network_dropout", "0.1", "--noise_offset", "0.05",
              "--learning_rate", "1e-2", "--save_state_on_train_end")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    done = run_script(["-c", _DETERMINISTIC_MAIN, *flags(full, *common, "--save_every_n_steps", "2", "--save_state")],
                      env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    state = full / "at-step00000002-state"
    done = run_script(["-c", _DETERMINISTIC_MAIN, *flags(resumed, *common, "--resume", str(state))], env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    a, _ = load_file(full / "last.safetensors")
    b, meta = load_file(resumed / "last.safetensors")
    assert meta["ss_steps"] == "4"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = torch.load(full / "last-state" / "sd_train_resume.pt", weights_only=True)
    rb = torch.load(resumed / "last-state" / "sd_train_resume.pt", weights_only=True)
    saved = torch.load(state / "sd_train_resume.pt", weights_only=True)
    assert "cuda" in saved["global_rng"]  # the state folder carries the CUDA RNG (network dropout draws there)
    assert ra["loss_slots"] == rb["loss_slots"] and len(ra["loss_slots"]) == 4
    oa = torch.load(full / "last-state" / "optimizer.bin", weights_only=True)
    ob = torch.load(resumed / "last-state" / "optimizer.bin", weights_only=True)
    for key, value in oa["state"].items():
        assert all(torch.equal(value[k], ob["state"][key][k]) for k in value)


def test_sampling_on_cuda_writes_an_image(train_sdxl, tmp_path):
    from PIL import Image

    from library.text.conditioning import device_of

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle --n blurry --w 64 --h 64 --s 4 --d 5 --l 5\n", encoding="utf-8")
    run = train_sdxl("--mixed_precision", "bf16", "--cache_latents", "--sample_prompts", str(prompts),
                     "--sample_at_first", "--sample_every_n_steps", "3")
    images = sorted((run.out / "sample").glob("*.png"))
    assert len(images) == 2  # before training and after step 3
    for path in images:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
            assert float(np.asarray(image, dtype=np.float32).std()) > 0  # not a blank (NaN) decode
    assert device_of(run.trainer.models.vae).type == "cpu"  # back where latent caching parked it


def test_benchmark_reports_peak_vram(tmp_path, flags, run_script):
    done = run_script(["benchmarks/train_step.py", "--", *flags(tmp_path / "bench", "--mixed_precision", "bf16")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: CUDA" in done.stdout
    found = re.search(r"\| peak VRAM allocated / reserved \| (\d+) / (\d+) MiB \|", done.stdout)
    assert found, done.stdout[-2000:]
    allocated, reserved = int(found.group(1)), int(found.group(2))
    assert 0 < allocated <= reserved
    assert re.search(r"\| optimizer steps timed \| 3 \|", done.stdout)
