"""What the run reports: one LR per optimizer step and group equal to the scheduler's own list, the effective
``lr/d*lr`` of adaptive optimizers, loss rows at every step, and the progress bar's UNet LR and avr_loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_train.optim import build_scheduler
from sd_train.sdxl_train_network import main as sdxl_main


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_data_loader_n_workers", "0", "--seed", "7", "--learning_rate", "1e-3", *extra]


def _scalars(logs) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(logs.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _scheduler_list(lrs: list[float], steps: int, **kwargs) -> list[list[float]]:
    """The scheduler's own LR list: what each group holds before each of ``steps`` optimizer steps."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])
    sched = build_scheduler(opt, kwargs.pop("name"), num_training_steps=steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("scheduler, extra, kwargs", [
    ("cosine_with_restarts", ["--lr_scheduler_num_cycles", "2"], {"num_cycles": 2}),
    ("linear", ["--lr_warmup_steps", "4"], {"num_warmup_steps": 4}),
])
def test_logged_learning_rates_equal_the_schedulers_list(assets, tmp_path, scheduler, extra, kwargs):
    """12 steps (past the old 10-step loss flush), two groups with different rates; before the fix the rate was read
    once per flush and written for every buffered step (four 1e-3 then four 0 for cosine with restarts)."""
    steps = 12
    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", str(steps), "--lr_scheduler", scheduler,
                           "--unet_lr", "1e-3", "--text_encoder_lr", "5e-4", "--logging_dir", str(tmp_path / "logs"),
                           *extra)) == 0
    scalars = _scalars(tmp_path / "logs")
    expected = _scheduler_list([5e-4, 1e-3], steps, name=scheduler, **kwargs)  # groups: text encoders, then UNet
    for index, tag in enumerate(("lr/textencoder", "lr/unet")):
        assert [s for s, _ in scalars[tag]] == list(range(1, steps + 1))
        logged = [v for _, v in scalars[tag]]
        assert logged == [float(np.float32(row[index])) for row in expected]  # TensorBoard stores float32
    assert len({v for _, v in scalars["lr/unet"]}) > 3  # the curve moves: warm-up or restarts are visible
    assert [s for s, _ in scalars["loss/current"]] == list(range(1, steps + 1))


def test_adaptive_optimizer_logs_d_times_lr(assets, tmp_path):
    from prodigyopt import Prodigy

    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", "2", "--network_train_unet_only",
                           "--optimizer_type", "Prodigy", "--learning_rate", "1.0",
                           "--logging_dir", str(tmp_path / "logs"))) == 0
    scalars = _scalars(tmp_path / "logs")
    d0 = Prodigy([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["d"]
    assert scalars["lr/unet"] == [(1, 1.0), (2, 1.0)]
    assert scalars["lr/d*lr/unet"][0] == (1, pytest.approx(d0 * 1.0))  # the step size step 1 used
    assert len(scalars["lr/d*lr/unet"]) == 2


def test_progress_bar_shows_unet_lr_and_moving_average_every_step(assets, tmp_path, monkeypatch):
    import sd_train.trainer as trainer_mod

    shown = []

    class Recording(trainer_mod.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            shown.append(dict(ordered_dict or kwargs))
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    monkeypatch.setattr(trainer_mod, "tqdm", Recording)
    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", "3", "--unet_lr", "1e-3",
                           "--text_encoder_lr", "5e-5", "--logging_dir", str(tmp_path / "logs"))) == 0
    averages = [v for _, v in _scalars(tmp_path / "logs")["loss/average"]]
    assert [row["lr"] for row in shown] == ["1.000e-03"] * 3  # the UNet group, not the text encoders' 5e-5
    assert [float(row["avr_loss"]) for row in shown] == pytest.approx(averages, abs=1e-4)
