"""Pre-flight checks before any model loads (one line naming the flag) and the resume policy."""

from __future__ import annotations

import sys

import pytest
import torch

from library.io.safetensors_io import load_file
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.train_network import main as sd_main


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-3", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    import library.checkpoint.io as cio

    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error: ")
    return lines[-1].removeprefix("error: ")


@pytest.mark.parametrize("extra, message", [
    (["--network_module", "networks.lroa"], "--network_module networks.lroa: cannot import it (No module named "
     "'networks.lroa'); pip install networks, or fix the name"),
    (["--network_module", "json"], "--network_module json: has no create_network(); not a network module"),
    (["--optimizer_type", "AdamWW"], "--optimizer_type AdamWW: unknown optimizer; use a kohya name (AdamW, "
     "AdamW8bit, Lion, Prodigy, Adafactor, …), a torch.optim class or a dotted path module.Class"),
    (["--lr_scheduler", "cosine_restarts"], "--lr_scheduler cosine_restarts: unknown; choose from constant, "
     "constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, piecewise_constant, inverse_sqrt, "
     "cosine_with_min_lr, warmup_stable_decay"),
])
def test_misspelt_names_fail_before_models_load(plain_assets, tmp_path, capsys, no_model_loading, extra, message):
    assert sdxl_main(_args(plain_assets, tmp_path / "out", *extra)) == 2
    assert _error(capsys) == message


def test_missing_optimizer_package_fails_before_models_load(plain_assets, tmp_path, capsys, monkeypatch,
                                                            no_model_loading):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--optimizer_type", "AdamW8bit")) == 2
    assert _error(capsys) == ("--optimizer_type AdamW8bit: cannot import it (No module named 'bitsandbytes.optim'; "
                              "'bitsandbytes' is not a package); pip install bitsandbytes, or fix the name")


def test_resume_folder_checks_before_models_load(plain_assets, tmp_path, capsys, no_model_loading):
    missing = tmp_path / "nope-state"
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--resume", str(missing))) == 2
    assert _error(capsys) == (f"--resume {missing}: folder not found; pass a state folder written with --save_state "
                              "(name-state, name-step00000100-state, name-interrupted-state, ...)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--resume", str(empty))) == 2
    assert _error(capsys) == (f"{empty / 'train_state.json'}: not found; --resume needs a state folder written with "
                              "--save_state")


def test_resume_of_another_family_is_named(plain_assets, tmp_path, capsys):
    from tools.make_tiny_model import make_tiny_checkpoint

    sd15 = make_tiny_checkpoint("sd15", tmp_path / "sd15.safetensors")
    out = tmp_path / "sd"
    assert sd_main(_args((sd15, plain_assets[1]), out, "--max_train_steps", "1", "--save_state")) == 0
    import library.checkpoint.io as cio

    cio_load = cio.load_models
    cio.load_models = lambda *a, **k: pytest.fail("models were loaded")
    try:
        assert sdxl_main(_args(plain_assets, tmp_path / "x", "--resume", str(out / "last-state"))) == 2
    finally:
        cio.load_models = cio_load
    assert _error(capsys) == (f"--resume {out / 'last-state'}: this state is of a train_network.py run; resume it "
                              "with train_network.py")


@pytest.mark.parametrize("script, resolution, message", [
    (sdxl_main, "72", "resolution 72x72 is not a multiple of 32 (the UNet halves the latents until then); without "
     "bucketing use e.g. 64x64, or enable_bucket"),
    (sd_main, "96", "resolution 96x96 is not a multiple of 64 (the UNet halves the latents until then); without "
     "bucketing use e.g. 64x64, or enable_bucket"),
])
def test_resolution_without_buckets_must_fit_the_unet(assets, tmp_path, capsys, no_model_loading, script,
                                                      resolution, message):
    """Before: a UNet shape traceback at step 1 (``--cache_latents`` lets large images through)."""
    image_dir = next(p for p in assets[1].parent.iterdir() if p.is_dir())
    args = ["--pretrained_model_name_or_path", str(assets[0]), "--train_data_dir", str(image_dir.parent),
            "--output_dir", str(tmp_path / "out"), "--network_module", "networks.lora", "--resolution", resolution,
            "--caption_extension", ".txt", "--cache_latents"]
    assert script(args) == 2
    assert _error(capsys) == f"datasets[0]: {message}"


@pytest.fixture(scope="module")
def saved_run(plain_assets, tmp_path_factory):
    """4 steps, constant LR 1e-3, with a state folder at step 2 (and the final LoRA as reference)."""
    out = tmp_path_factory.mktemp("saved")
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "4", "--network_train_unet_only",
                           "--save_every_n_steps", "2", "--save_state")) == 0
    return out


def test_resume_with_changed_schedule_is_allowed_with_a_warning(plain_assets, saved_run, tmp_path, capsys):
    """Before: refused after the models loaded. The new rate is in effect from the resumed step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    state = saved_run / "at-step00000002-state"
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--max_train_steps", "6", "--network_train_unet_only",
                           "--learning_rate", "5e-4", "--resume", str(state), "--logging_dir",
                           str(tmp_path / "logs"))) == 0
    err = capsys.readouterr().err
    assert (f"--resume {state}: changed since the state was saved: learning_rate 0.001 → 0.0005, max_train_steps "
            "4 → 6; the run continues with the new values and is no longer bit-exact with an uninterrupted "
            "run") in err
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lr/unet")] == [(s, pytest.approx(5e-4)) for s in (3, 4, 5, 6)]


def test_resume_with_changed_data_order_is_refused_before_models_load(plain_assets, saved_run, tmp_path, capsys,
                                                                     no_model_loading):
    state = saved_run / "at-step00000002-state"
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--max_train_steps", "4", "--network_train_unet_only",
                           "--seed", "8", "--gradient_accumulation_steps", "2", "--resume", str(state))) == 2
    assert _error(capsys) == (f"--resume {state}: the state was saved with different options that change the data "
                              "order or the network: gradient_accumulation_steps 1 → 2, seed 7 → 8; use the saved "
                              "values (or pass --initial_step to start from it anyway)")


def test_resume_without_seed_takes_the_saved_one_and_stays_bit_exact(plain_assets, saved_run, tmp_path):
    args = _args(plain_assets, tmp_path / "out", "--max_train_steps", "4", "--network_train_unet_only",
                 "--resume", str(saved_run / "at-step00000002-state"))
    seed_at = args.index("--seed")
    assert sdxl_main(args[:seed_at] + args[seed_at + 2:]) == 0
    a, b = load_file(saved_run / "last.safetensors")[0], load_file(tmp_path / "out" / "last.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
