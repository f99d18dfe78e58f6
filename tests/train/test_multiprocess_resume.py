"""Bit-exact resume and validation under two CPU processes (``accelerate launch``, gloo; TRAINING.md §10–11).

Run A trains 4 steps and saves state at step 2; run B resumes A's step-2 state and trains to step 4.
Both validate after every step and at the end of epoch 1 (6 training images, batch 1, 2 processes:
3 steps per epoch; 2 validation images, one batch per process). Under ``__main__`` this file is the
training script: it wraps the trainer to write one probe JSON per rank with every validation result
and the validation losses that went into it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from library.io.safetensors_io import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, tag: str, *extra: str) -> list[dict]:
    """Run this file under 2 processes into ``root/tag``; returns the two ranks' probes."""
    ckpt, toml, probe = root / "tiny.safetensors", root / "one_repeat.toml", root / f"probe_{tag}"
    probe.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
           "--main_process_port", str(_free_port()), __file__,
           "--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
           "--output_dir", str(root / tag), "--network_module", "networks.lora", "--network_dim", "4",
           "--max_train_steps", "4", "--max_data_loader_n_workers", "0", "--seed", "3", "--learning_rate", "1e-2",
           "--network_dropout", "0.1", "--noise_offset", "0.05", "--network_train_unet_only",
           "--validation_split", "0.25", "--validate_every_n_steps", "1", "--save_state", *extra]
    env = {**os.environ, "SD_TRAIN_PROBE": str(probe), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode and "address already in use" in (proc.stdout + proc.stderr).lower():
        # the free port was taken between _free_port() and the launch (another test's processes): once more
        cmd[cmd.index("--main_process_port") + 1] = str(_free_port())
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((probe / f"rank{i}.json").read_text()) for i in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("mp_resume")
    make_tiny_checkpoint("sdxl", root / "tiny.safetensors")
    image_dir = next(p for p in make_sample_dataset(root / "data").parent.iterdir() if p.is_dir())
    (root / "one_repeat.toml").write_text(
        '[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 1\nenable_bucket = true\n'
        f'min_bucket_reso = 64\nmax_bucket_reso = 128\n\n[[datasets]]\n[[datasets.subsets]]\n'
        f'image_dir = "{image_dir.as_posix()}"\n')
    full = _launch(root, "full", "--save_every_n_steps", "2", "--logging_dir", str(root / "logs"))
    resumed = _launch(root, "resumed", "--resume", str(root / "full" / "at-step00000002-state"))
    return root, full, resumed


@pytest.mark.slow
def test_two_plus_resume_plus_two_equals_four_under_two_processes(runs):
    root, full, resumed = runs
    a, _ = load_file(root / "full" / "last.safetensors")
    b, meta = load_file(root / "resumed" / "last.safetensors")
    assert meta["ss_steps"] == "4" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(v.abs().sum() > 0) for k, v in a.items() if k.endswith("lora_up.weight"))  # it trained
    for rank in range(2):
        assert full[rank]["network_sha256"] == resumed[rank]["network_sha256"] == full[0]["network_sha256"]
        name = "sd_train_resume.pt" if rank == 0 else f"sd_train_resume_{rank}.pt"
        ra, rb = (torch.load(root / run / "last-state" / name, weights_only=True) for run in ("full", "resumed"))
        assert ra["progress"] == rb["progress"] == {"global_step": 4, "epoch": 1, "batch_index": 1}
        assert ra["loss_slots"] == rb["loss_slots"] and len(ra["loss_slots"]) == 3  # logged losses equal too
        assert torch.equal(ra["noise_gen"], rb["noise_gen"])


@pytest.mark.slow
def test_validation_is_reduced_over_both_ranks(runs):
    _, full, resumed = runs
    for probes in (full, resumed):
        r0, r1 = probes
        assert [(c["kind"], c["at"], c["value"]) for c in r0["validations"]] == \
            [(c["kind"], c["at"], c["value"]) for c in r1["validations"]]
        for c0, c1 in zip(r0["validations"], r1["validations"]):
            assert len(c0["losses"]) == len(c1["losses"]) == 4  # one batch per rank × 4 fixed timesteps
            assert c0["losses"] != c1["losses"]  # different images
            assert c0["value"] == pytest.approx(sum(c0["losses"] + c1["losses"]) / 8, rel=1e-6)
    schedule = [(c["kind"], c["at"]) for c in full[0]["validations"]]
    assert schedule == [("step", 1), ("step", 2), ("step", 3), ("epoch", 1), ("step", 4)]
    after_resume = [(c["kind"], c["at"], c["value"]) for c in resumed[0]["validations"]]
    assert after_resume == [(c["kind"], c["at"], c["value"]) for c in full[0]["validations"][2:]]


@pytest.mark.slow
def test_only_rank_zero_logs_validation(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, full, _ = runs
    (events,) = list((root / "logs").rglob("events.out.tfevents.*"))  # one writer: rank 0
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("loss/validation/step_average")]
    expected = [(c["at"], c["value"]) for c in full[0]["validations"] if c["kind"] == "step"]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


def _network_sha(trainer) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(trainer.accelerator.unwrap_model(trainer.network).state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _probe_main(argv: list[str]) -> int:
    """Run the SDXL entry point, recording each validation (value and per-rank losses) per rank."""
    from sd_train import trainer as trainer_mod
    from sd_train import validation
    from sd_train.sdxl_train_network import main

    torch.use_deterministic_algorithms(True)
    probe, calls = Path(os.environ["SD_TRAIN_PROBE"]), []
    base_train, base_step, base_epoch = trainer_mod.Trainer.train, validation.Validator.after_step, \
        validation.Validator.after_epoch
    base_compute = trainer_mod.Trainer.compute_loss

    def compute_loss(self, batch, gen, rng, timestep=None):
        out = base_compute(self, batch, gen, rng, timestep)
        if timestep is not None and calls:  # validation calls pass a fixed timestep
            calls[-1]["losses"].append(float(out[0]))
        return out

    def recorded(kind, base):
        def wrapper(self, at):
            calls.append({"kind": kind, "at": at, "losses": []})
            value = base(self, at)
            if value is None:
                calls.pop()
            else:
                calls[-1]["value"] = value
            return value
        return wrapper

    def train(self):
        base_train(self)
        info = {"validations": calls, "network_sha256": _network_sha(self)}
        (probe / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(info))

    trainer_mod.Trainer.train, trainer_mod.Trainer.compute_loss = train, compute_loss
    validation.Validator.after_step = recorded("step", base_step)
    validation.Validator.after_epoch = recorded("epoch", base_epoch)
    return main(argv)


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
