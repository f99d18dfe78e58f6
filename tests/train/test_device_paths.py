"""CPU checks of the code paths that a CUDA run takes (half-precision models, GradScaler, sampling, flags).

Each test reproduces on the CPU the state a GPU run is in (text encoders in bf16 next to fp32 LoRA weights,
accelerate's fp16 ``GradScaler``, a VAE parked on another device after latent caching) and asserts the
trainer's behaviour there; ``tests/gpu`` runs the same paths for real on a CUDA machine.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.scheduler import AcceleratedScheduler

from library.models import sdxl_unet
from sd_train import optim
from sd_train.guard import NanGuard
from sd_train.monitor import StepMonitor
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.trainer import Trainer


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", "1",
            "--max_data_loader_n_workers", "0", "--seed", "5", "--learning_rate", "1e-3", *extra]


def test_text_encoder_lora_trains_with_half_precision_text_encoders(assets, tmp_path):
    """On CUDA the TEs are cast to the mixed-precision dtype while the LoRA stays fp32: encode under autocast."""
    from sd_train.cli import parse_options
    from sd_train.families.base import family_kwargs
    from sd_train.families.sdxl import SdxlFamily

    options = parse_options(_args(assets, tmp_path / "o", "--mixed_precision", "bf16"), "sdxl")
    trainer = Trainer(options, SdxlFamily(**family_kwargs(options)))
    assert trainer.setup()
    try:
        assert trainer.train_te
        for te in trainer.models.text_encoders:
            te.to(torch.bfloat16)  # what _setup_models does on a CUDA device
        trainer.dataset.set_epoch(1)
        loss, _ = trainer.compute_loss(trainer.dataset[0], trainer.gen, trainer.rng)
        loss.backward()
        te_grads = [p.grad for m in trainer.host.network.text_encoder_loras for p in m.parameters()]
        te_grads = [g for g in te_grads if g is not None]  # TE layers after the penultimate one get none
        assert bool(torch.isfinite(loss)) and te_grads and all(bool(torch.isfinite(g).all()) for g in te_grads)
        assert any(bool(g.abs().sum() > 0) for g in te_grads)
        assert {p.dtype for p in trainer.host.network.parameters()} == {torch.float32}
    finally:
        trainer.cleanup()


def test_sampling_under_mixed_precision_with_cached_latents(assets, tmp_path, monkeypatch):
    """bf16 base weights + fp32 LoRA sample under autocast; the VAE parked after latent caching is moved to the
    training device for sampling and back (on the CPU both are the CPU, so the moves are recorded)."""
    from diffusers import AutoencoderKL

    from sd_train import sampling

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 2 --d 3\n", encoding="utf-8")
    events = []
    original_to, original_generate = AutoencoderKL.to, sampling.generate
    original_sample = sampling.sample_during_training

    def spy_to(self, *a, **k):
        events.append(("to", str(a[0]) if a else None))
        return original_to(self, *a, **k)

    def spy_sample(*a, **k):
        events.append(("start",))
        return original_sample(*a, **k)

    monkeypatch.setattr(AutoencoderKL, "to", spy_to)
    monkeypatch.setattr(sampling, "generate",
                        lambda *a, **k: events.append(("generate",)) or original_generate(*a, **k))
    monkeypatch.setattr(sampling, "sample_during_training", spy_sample)
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--mixed_precision", "bf16", "--cache_latents", "--network_train_unet_only",
                           "--sample_prompts", str(prompts), "--sample_at_first", "--sample_every_n_steps", "1")) == 0
    assert len(sorted((out / "sample").glob("*.png"))) == 2  # --sample_at_first and after step 1
    first = events.index(("start",))
    assert ("to", "cpu") in events[:first]  # parked after caching
    assert events[first:first + 4] == [("start",), ("to", "cpu"), ("generate",), ("to", "cpu")]


def test_sample_decode_keeps_the_fp32_vae_out_of_autocast(assets):
    """--no_half_vae: sampling runs under autocast, but the VAE decodes in its own fp32."""
    from sd_train.families.sdxl import SdxlFamily
    from sd_train.sampling import SamplePrompt, generate

    family = SdxlFamily()
    models = family.load(str(assets[0]))
    seen = []
    models.vae.decoder.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = generate(family, models, SamplePrompt("a cat", width=64, height=64, sample_steps=1, seed=1))
    assert seen == [torch.float32] and image.size == (64, 64)


def test_sdxl_gradient_checkpointing_runs_during_training(assets, tmp_path, monkeypatch):
    """The SDXL UNet checkpoints only in train mode: --gradient_checkpointing must put the frozen UNet there."""
    calls = []
    original = sdxl_unet.checkpoint
    monkeypatch.setattr(sdxl_unet, "checkpoint", lambda *a, **k: calls.append(k["use_reentrant"]) or original(*a, **k))
    assert sdxl_main(_args(assets, tmp_path / "o", "--gradient_checkpointing", "--network_train_unet_only")) == 0
    assert calls and set(calls) == {False}


@pytest.mark.parametrize("flags", [[], ["--network_train_unet_only"]])
def test_xformers_without_the_package_is_one_line(assets, tmp_path, monkeypatch, capsys, flags):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    assert sdxl_main(_args(assets, tmp_path / "o", "--xformers", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--xformers" in err[0] and "pip install xformers" in err[0]
    assert not (tmp_path / "o" / "last.safetensors").exists()


def test_sd_family_xformers_without_the_package_is_a_user_error(monkeypatch):
    from library.errors import UserError
    from sd_train.families.sd import SdFamily

    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(UserError, match="pip install xformers"):
        SdFamily().use_xformers(torch.nn.Linear(1, 1))


class _Fp16Accelerator:
    """The part of ``accelerate.Accelerator`` that ``Trainer._optimizer_step`` uses, with accelerate's fp16
    semantics (``clip_grad_norm_`` unscales through the GradScaler first) around a real CPU GradScaler."""

    def __init__(self, scaler):
        self.scaler, self.num_processes, self.device, self.printed = scaler, 1, torch.device("cpu"), []

    def clip_grad_norm_(self, params, max_norm):
        self.scaler.unscale_(self.optimizer.optimizer)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def print(self, text):
        self.printed.append(text)


@pytest.fixture()
def accelerate_state():
    """accelerate's optimizer/scheduler wrappers read the global state: create it, forget it afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _fp16_trainer(dtype=torch.float32, init_scale=2.0**16):
    """A trainer shell with one parameter, a real CPU GradScaler and accelerate's optimizer/scheduler wrappers."""
    param = torch.nn.Parameter(torch.ones(4, dtype=dtype))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    acc = _Fp16Accelerator(scaler)
    inner = torch.optim.SGD([param], lr=0.5)
    acc.optimizer = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
    sched = AcceleratedScheduler(torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0 / (s + 1)), acc.optimizer)
    opts = SimpleNamespace(optimizer=SimpleNamespace(max_grad_norm=1.0),
                           network=SimpleNamespace(scale_weight_norms=None))
    host = SimpleNamespace(get_trainable_params=lambda: [param])
    narrator = SimpleNamespace(nan_skip=lambda step, report: acc.printed.append(f"skipped non-finite step {step}"))
    shell = SimpleNamespace(opts=opts, progress=SimpleNamespace(global_step=0), host=host, accelerator=acc,
                            optimizer=acc.optimizer, lr_scheduler=sched, guard=NanGuard(max_consecutive=2),
                            _last_timesteps=torch.tensor([500]), monitor=StepMonitor(acc, ["unet"]),
                            narrator=narrator)
    return shell, param, scaler


def _window(shell, param, scale_factor: float = 1.0):
    """Backward one micro-batch through the scaler; returns the detached (unscaled) loss window."""
    loss = (param.float() * scale_factor).sum()
    shell.accelerator.scaler.scale(loss).backward()
    return [loss.detach()]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden:UserWarning")
def test_gradscaler_overflow_is_not_a_nan_guard_skip(accelerate_state):
    shell, param, scaler = _fp16_trainer(init_scale=2.0**125)
    Trainer._optimizer_step(shell, _window(shell, param, 1e6), {})  # scaled grads overflow fp32
    assert torch.equal(param.detach(), torch.ones(4))  # GradScaler skipped the step ...
    assert scaler.get_scale() == 2.0**124  # ... and lowered its scale
    assert shell.guard.skipped_total == 0 and not shell.accelerator.printed
    assert shell.lr_scheduler.scheduler.last_epoch == 0  # accelerate does not step the LR after a skipped step
    for _ in range(3):  # the next windows unscale again without "unscale_() has already been called"
        Trainer._optimizer_step(shell, _window(shell, param), {})
    assert not torch.equal(param.detach(), torch.ones(4)) and shell.guard.skipped_total == 0
    assert shell.lr_scheduler.scheduler.last_epoch == 3


def test_gradscaler_nan_loss_counts_and_resets_the_scaler(accelerate_state):
    shell, param, scaler = _fp16_trainer()
    Trainer._optimizer_step(shell, _window(shell, param, float("nan")), {"captions": ["x"]})
    assert shell.guard.skipped_total == 1 and "skipped non-finite step 1" in shell.accelerator.printed[0]
    assert torch.equal(param.detach(), torch.ones(4)) and scaler.get_scale() == 2.0**15
    Trainer._optimizer_step(shell, _window(shell, param), {})
    assert shell.guard.consecutive == 0 and not torch.equal(param.detach(), torch.ones(4))


def test_full_fp16_gradients_unscale_after_allow_fp16_unscale(accelerate_state):
    shell, param, scaler = _fp16_trainer(dtype=torch.float16, init_scale=2.0**10)
    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        Trainer._optimizer_step(shell, _window(shell, param), {})
    shell, param, scaler = _fp16_trainer(dtype=torch.float16, init_scale=2.0**10)
    optim.allow_fp16_unscale(scaler)
    optim.allow_fp16_unscale(None)  # no scaler (bf16, CPU): nothing to patch
    Trainer._optimizer_step(shell, _window(shell, param), {})
    assert param.dtype == torch.float16 and bool(torch.isfinite(param).all())
    assert torch.allclose(param.detach().float(), torch.full((4,), 0.75))  # 1 - 0.5 * clip(grad 1, norm 2 -> 1)
