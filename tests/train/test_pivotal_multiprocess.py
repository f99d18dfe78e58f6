"""Pivotal tuning in two CPU processes (``accelerate launch --multi_gpu``, gloo): the new rows are averaged
across the ranks like the network, so both ranks end with the same rows (each saw other batches), and
rank 0's ``_emb`` file holds them.

The test launches this file as the training script; under ``__main__`` it wraps the trainer to write each
rank's rows (as lists) into ``SD_TRAIN_PROBE``.
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


@pytest.mark.slow
def test_rows_are_averaged_across_processes(tmp_path):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("sdxl", tmp_path / "tiny.safetensors")
    toml = make_sample_dataset(tmp_path / "data")
    out, probe = tmp_path / "out", tmp_path / "probe"
    probe.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "--main_process_port", str(port),
           __file__, "--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
           "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
           "--max_train_steps", "2", "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-2",
           "--network_train_unet_only", "--train_text_encoder_ti", "--token_abstraction", "sks",
           "--train_text_encoder_ti_frac", "1"]
    env = {**os.environ, "SD_TRAIN_PROBE": str(probe), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["batches"] != ranks[1]["batches"]  # different data on each rank ...
    assert ranks[0]["rows"] == ranks[1]["rows"]  # ... the same rows after averaging
    assert ranks[0]["rows"] != ranks[0]["initial"]
    emb, _ = load_file(out / "last_emb.safetensors")
    assert [emb["clip_l"].tolist(), emb["clip_g"].tolist()] == ranks[0]["rows"]


def _probe_main(argv: list[str]) -> int:
    from sd_train import trainer as trainer_mod
    from sd_train.sdxl_train_network import main

    probe, base_train, base_step, seen = Path(os.environ["SD_TRAIN_PROBE"]), trainer_mod.Trainer.train, \
        trainer_mod.Trainer.train_step, []

    def rows(self):
        return [te.get_input_embeddings().added.detach().tolist() for te in self.models.text_encoders]

    def train_step(self, batch, accum=1):
        seen.append([str(p) for p in batch["image_paths"]])
        return base_step(self, batch, accum)

    def train(self):
        initial = rows(self)
        base_train(self)
        info = {"initial": initial, "rows": rows(self), "batches": seen}
        (probe / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(info))

    trainer_mod.Trainer.train, trainer_mod.Trainer.train_step = train, train_step
    return main(argv)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(_probe_main(sys.argv[1:]))
