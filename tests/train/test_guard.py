"""NaN guard accounting (TRAINING.md §12)."""

from __future__ import annotations

import pytest
import torch

from sd_train.guard import NanGuard, NonFiniteTrainingError, batch_report, is_finite, params_finite


def test_finiteness_checks():
    assert is_finite(torch.tensor([1.0, 2.0])) and not is_finite(torch.tensor([1.0, float("nan")]))
    assert not is_finite(float("inf"))
    assert params_finite([torch.ones(2)]) and not params_finite([torch.ones(2), torch.tensor([float("inf")])])


def test_consecutive_limit_and_reset():
    guard = NanGuard(max_consecutive=3)
    guard.record_skip(1, "loss", "r1")
    guard.record_skip(2, "loss", "r2")
    guard.record_ok()
    assert guard.consecutive == 0 and guard.skipped_total == 2
    guard.record_skip(4, "loss", "r")
    guard.record_skip(5, "loss", "r")
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive") as info:
        guard.record_skip(6, "grad norm", "r")
    assert info.value.exit_code == 3
    restored = NanGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped_total == 5 and restored.consecutive == 3


def test_param_check_raises():
    with pytest.raises(NonFiniteTrainingError, match="step 7"):
        NanGuard().check_params([torch.tensor([float("nan")])], 7)


def test_batch_report_names_images_captions_timesteps():
    batch = {"absolute_paths": ["/d/a.png"], "captions": ["a cat"], "latents": torch.zeros(1, 4, 8, 16)}
    text = batch_report(batch, torch.tensor([421]))
    assert "/d/a.png" in text and "a cat" in text and "[421]" in text and "(64, 128)" in text


def _nan_noise(monkeypatch, calls_to_poison):
    """Make ``noisy_latents`` return NaN target noise on the given (1-based) calls."""
    import sd_train.noise as noise

    real, count = noise.noisy_latents, {"n": 0}

    def poisoned(*args, **kwargs):
        eps, x_t, t = real(*args, **kwargs)
        count["n"] += 1
        return (eps * float("nan"), x_t, t) if count["n"] in calls_to_poison else (eps, x_t, t)

    monkeypatch.setattr(noise, "noisy_latents", poisoned)


def _run(tmp_path, steps, *extra):
    from sd_train.sdxl_train_network import main
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sdxl", tmp_path / "tiny.safetensors")
    toml = make_sample_dataset(tmp_path / "data")
    return main(["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
                 "--output_dir", str(tmp_path / "out"), "--network_module", "networks.lora",
                 "--max_train_steps", str(steps), "--max_data_loader_n_workers", "0",
                 "--learning_rate", "1e-2", "--network_train_unet_only", *extra])


def test_injected_nan_step_is_skipped_and_reported(tmp_path, monkeypatch, capsys):
    from library.io.safetensors_io import load_file

    _nan_noise(monkeypatch, {1})
    assert _run(tmp_path, 2) == 0
    err = capsys.readouterr().err  # a warning through logging (stays under --quiet)
    assert "skipped non-finite step 1" in err and "10_sks shape" in err and "timesteps=" in err
    weights, meta = load_file(tmp_path / "out" / "last.safetensors")
    assert meta["ss_steps"] == "2" and all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert any(bool(w.abs().sum() > 0) for k, w in weights.items() if "lora_up" in k)  # step 2 trained


def test_consecutive_nan_steps_stop_without_saving(tmp_path, monkeypatch, capsys):
    _nan_noise(monkeypatch, set(range(1, 100)))
    assert _run(tmp_path, 3, "--max_nan_steps", "2") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "2 consecutive optimizer steps" in err[-1]
    assert not (tmp_path / "out" / "last.safetensors").exists()
