"""SIGINT/SIGTERM during training: the interrupted LoRA and state, the printed resume command, bit-exact resume,
a second Ctrl-C, and a real Ctrl-C sent to the whole process group of a trainer subprocess."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from library.io.safetensors_io import load_file, read_header
from sd_train.sdxl_train_network import main as sdxl_main

ROOT = Path(__file__).resolve().parents[2]


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-3", *extra]


def _signal_at(monkeypatch, micro_batches: list[int], signum=signal.SIGINT) -> None:
    """Raise ``signum`` inside the given micro-batches (counted from 1) of the next run, as a user would."""
    import sd_train.trainer as trainer_mod

    assert threading.current_thread() is threading.main_thread()  # Python delivers signals to it only
    original, seen = trainer_mod.Trainer.train_step, [0]

    def step(self, batch, accum=1):
        seen[0] += 1
        for _ in range(micro_batches.count(seen[0])):
            signal.raise_signal(signum)
        return original(self, batch, accum)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)


def _equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(a)[0], load_file(b)[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(plain_assets, tmp_path_factory):
    """The reference: 6 uninterrupted steps (8 images, batch 2: 4 steps per epoch, so two epochs)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "6")) == 0
    return out / "last.safetensors"


@pytest.mark.parametrize("when", ["epoch_end", "random"])
def test_sigint_then_printed_resume_command_reaches_the_same_lora(plain_assets, tmp_path, monkeypatch, capsys,
                                                                 uninterrupted, when):
    """Micro-batch 4 is the last step of epoch 1 (the resume then does the epoch end); the other is random."""
    at = 4 if when == "epoch_end" else random.randint(1, 5)
    out = tmp_path / "out"
    _signal_at(monkeypatch, [at])
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "6")) == 130, f"interrupted at micro-batch {at}"
    monkeypatch.undo()
    printed = capsys.readouterr()
    assert "SIGINT: stopping after the current step" in printed.err
    lines = printed.out.strip().splitlines()
    state = out / "last-interrupted-state"
    assert lines[-2] == (f"interrupted at step {at}/6 (epoch {1 + (at - 1) // 4}/2): wrote "
                         f"{out / 'last-interrupted.safetensors'} and the state folder {state}")
    command = shlex.split(lines[-1].removeprefix("resume with: "))
    assert command[0] == "sdxl_train_network.py" and command[-2:] == ["--resume", str(state)]
    assert read_header(out / "last-interrupted.safetensors")[1]["ss_steps"] == str(at)
    assert not (out / "last.safetensors").exists()
    assert sdxl_main(command[1:]) == 0
    assert f"resumed {state}: continuing at step {at}/6" in capsys.readouterr().out
    assert _equal(out / "last.safetensors", uninterrupted), f"interrupted at micro-batch {at}"


def test_sigterm_with_accumulation_finishes_the_step(plain_assets, tmp_path, monkeypatch, capsys):
    """The signal arrives in the first micro-batch of an accumulation window: that optimizer step completes."""
    out = tmp_path / "out"
    _signal_at(monkeypatch, [3], signal.SIGTERM)
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "3", "--gradient_accumulation_steps", "2",
                           "--output_name", "run")) == 130
    assert "interrupted at step 2/3" in capsys.readouterr().out
    assert read_header(out / "run-interrupted.safetensors")[1]["ss_steps"] == "2"
    assert (out / "run-interrupted-state" / "train_state.json").is_file()


def test_second_ctrl_c_exits_at_once_and_keeps_earlier_files(plain_assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _signal_at(monkeypatch, [3, 3])  # two Ctrl-C in a row, during step 3 (after the step-2 save)
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "6", "--save_every_n_steps", "2")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert sorted(p.name for p in out.iterdir()) == ["at-step00000002.safetensors", "last_dataset_report.json",
                                                     "last_report.html", "last_run.json"]
    assert read_header(out / "at-step00000002.safetensors")[1]["ss_steps"] == "2"


def test_no_save_on_interrupt(plain_assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _signal_at(monkeypatch, [2])
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "4", "--no_save_on_interrupt")) == 130
    assert "interrupted at step 2/4 (epoch 1/1); nothing saved (--no_save_on_interrupt)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["last_dataset_report.json", "last_report.html", "last_run.json"]


def test_resume_command_replaces_resume_and_initial_step():
    from sd_train.interrupt import resume_command

    argv = ["--config_file", "my run.toml", "--resume=old", "--initial_step", "3", "--skip_until_initial_step",
            "--initial_epoch=2", "--seed", "1"]
    assert resume_command("train_network.py", argv, "out/x-interrupted-state") == (
        "train_network.py --config_file 'my run.toml' --seed 1 --resume out/x-interrupted-state")


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.2)


def test_ctrl_c_to_the_process_group_of_a_real_run(plain_assets, tmp_path, capsys):
    """A terminal's Ctrl-C reaches the trainer and its DataLoader workers; the workers ignore it, the step in
    progress completes, and the state written resumes."""
    out = tmp_path / "out"
    args = _args(plain_assets, out, "--max_train_steps", "400", "--save_every_n_steps", "1", "--save_last_n_steps",
                 "1",
                 "--max_data_loader_n_workers", "2", "--network_train_unet_only")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "sdxl_train_network.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(out / "at-step00000002.safetensors", proc, 240)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    state = out / "last-interrupted-state"
    step = int(read_header(out / "last-interrupted.safetensors")[1]["ss_steps"])
    assert f"interrupted at step {step}/400" in stdout and f"--resume {state}" in stdout
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", str(step + 1), "--network_train_unet_only",
                           "--resume", str(state))) == 0
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == str(step + 1)
    assert "max_train_steps 400 → " in capsys.readouterr().err  # the run length changed: warned, allowed
