"""Two CPU processes under ``accelerate launch`` (gloo): sharded data, identical weights, rank-0 files.

accelerate 1.15 starts several CPU processes only through its torchrun path (``--multi_gpu``;
``--cpu`` runs one process unless MPI is set up); without CUDA the trainer then joins over gloo.

The test launches this file as the training script; under ``__main__`` it wraps the trainer to
write one probe JSON per rank (batches seen, network hash, scheduler steps) into ``SD_TRAIN_PROBE``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from library.io.safetensors_io import read_header


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("mp")
    ckpt = make_tiny_checkpoint("sdxl", root / "tiny.safetensors")
    toml = make_sample_dataset(root / "data")
    out, probe = root / "out", root / "probe"
    probe.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
           "--main_process_port", str(_free_port()), __file__,
           "--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
           "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
           "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-3",
           "--lr_scheduler", "linear", "--network_dropout", "0.1", "--save_every_n_steps", "1",
           "--save_state", "--network_train_unet_only"]
    env = {**os.environ, "SD_TRAIN_PROBE": str(probe), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probes = [json.loads((probe / f"rank{i}.json").read_text()) for i in range(2)]
    return out, probes


@pytest.mark.slow
def test_data_is_sharded_between_ranks(launched):
    _, (r0, r1) = launched
    assert r0["indices"] == [0, 2] and r1["indices"] == [1, 3]  # batches_per_process = ceil(batches / 2)
    assert r0["batches"] != r1["batches"] and len(r0["batches"]) == len(r1["batches"]) == 2
    assert (r0["max_train_steps"], r0["steps_per_epoch"]) == (2, 20)  # 40 batches / 2 processes


@pytest.mark.slow
def test_weights_stay_identical_and_scheduler_sees_steps_times_processes(launched):
    out, (r0, r1) = launched
    assert r0["network_sha256"] == r1["network_sha256"]
    assert r0["initial_sha256"] != r0["network_sha256"]  # it trained
    assert r0["scheduler_steps"] == r1["scheduler_steps"] == 4  # 2 steps × 2 processes
    assert r0["lrs"] == r1["lrs"] == pytest.approx([5e-4, 0.0])  # linear decay over 4 scheduler steps


@pytest.mark.slow
def test_only_rank_zero_writes_files(launched):
    out, _ = launched
    assert sorted(p.name for p in out.iterdir()) == [
        "at-step00000001-state", "at-step00000001.safetensors", "last-state", "last.safetensors",
        "last_dataset_report.json", "last_report.html", "last_run.json"]
    assert sorted(p.name for p in (out / "last-state").iterdir()) == [
        "model.safetensors", "optimizer.bin", "scheduler.bin", "sd_train_resume.pt", "sd_train_resume_1.pt",
        "train_state.json"]  # no random_states_*.pkl: nothing pickled; one RNG record per process
    records = [torch.load(out / "last-state" / n, weights_only=True) for n in ("sd_train_resume.pt",
                                                                              "sd_train_resume_1.pt")]
    assert records[0]["progress"] == records[1]["progress"] == {"global_step": 2, "epoch": 0, "batch_index": 2}
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == "2"


def _network_sha(trainer) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(trainer.accelerator.unwrap_model(trainer.network).state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _probe_main(argv: list[str]) -> int:
    """Run the SDXL entry point with a wrapped Trainer that records what each rank did."""
    from sd_train import trainer as trainer_mod
    from sd_train.loader import EpochLoader
    from sd_train.sdxl_train_network import main

    probe, seen, base_train = Path(os.environ["SD_TRAIN_PROBE"]), [], trainer_mod.Trainer.train
    base_step, base_opt, lrs = trainer_mod.Trainer.train_step, trainer_mod.Trainer._optimizer_step, []

    def train_step(self, batch, accum=1):
        seen.append([str(p) for p in batch["image_paths"]] + [float(batch["images"].sum())])
        return base_step(self, batch, accum)

    def optimizer_step(self, window, batch):
        base_opt(self, window, batch)
        lrs.append(self.optimizer.param_groups[0]["lr"])

    def train(self):
        initial = _network_sha(self)
        base_train(self)
        sched = self.lr_scheduler.scheduler
        acc = self.accelerator
        indices = EpochLoader(self.dataset, acc.num_processes, acc.process_index, 0, False).indices()
        info = {"indices": indices[:2], "batches": seen, "network_sha256": _network_sha(self),
                "initial_sha256": initial, "scheduler_steps": sched.last_epoch,
                "lrs": lrs, "max_train_steps": self.max_train_steps,
                "steps_per_epoch": self.steps_per_epoch}
        (probe / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(info))

    trainer_mod.Trainer.train_step, trainer_mod.Trainer.train = train_step, train
    trainer_mod.Trainer._optimizer_step = optimizer_step
    return main(argv)


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
