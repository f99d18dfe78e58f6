"""``--initial_step`` / ``--initial_epoch`` / ``--skip_until_initial_step`` and kohya-state resume (CLI.md §9)."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from library.errors import UserError
from library.io.safetensors_io import read_header
from sd_train.resume import Progress, initial_progress
from sd_train.sdxl_train_network import main as sdxl_main


def _args(assets, out, *extra):
    ckpt, toml = assets  # 40 batches per epoch
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_train_steps", "4", "--max_data_loader_n_workers", "0", "--seed", "9",
            "--network_train_unet_only", *extra]


def _logged_steps(log_dir, tag="loss/current"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(log_dir.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.parametrize("step, epoch, skip, accum, expected", [
    (None, None, False, 1, None),
    (5, None, True, 1, Progress(5, 1, 1)),  # 4 steps per epoch: epoch 2, one step in
    (5, None, True, 2, Progress(5, 1, 2)),  # micro-batches of that step are skipped too
    (5, None, False, 1, Progress(5, 1, 0)),  # no skip: the data restarts at the epoch's beginning
    (None, 3, False, 1, Progress(8, 2, 0)),  # (initial_epoch − 1) × steps_per_epoch
    (2, 3, False, 1, Progress(2, 0, 0)),  # --initial_step wins
])
def test_initial_progress(step, epoch, skip, accum, expected):
    assert initial_progress(step, epoch, skip, 4, 20, accum) == expected


@pytest.mark.parametrize("step, epoch", [(20, None), (None, 6), (None, 0)])
def test_initial_step_out_of_range(step, epoch):
    with pytest.raises(UserError, match="initial"):
        initial_progress(step, epoch, False, 4, 20, 1)


def test_initial_step_starts_the_counter(assets, tmp_path):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--initial_step", "2", "--skip_until_initial_step",
                           "--logging_dir", str(tmp_path / "logs"))) == 0
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == "4"
    assert _logged_steps(tmp_path / "logs") == [3, 4]


def test_initial_step_not_below_max_steps_is_refused(assets, tmp_path, capsys):
    code = sdxl_main(_args(assets, tmp_path / "out", "--initial_epoch", "2"))  # step 40 ≥ 4
    assert code == 2 and "max_train_steps" in capsys.readouterr().err


class _Trap:
    """Unpickling this runs code: a state folder loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_kohya_state_resumes_at_its_step_without_unpickling(assets, tmp_path, capsys):
    first = tmp_path / "first"
    assert sdxl_main(_args(assets, first, "--max_train_steps", "2", "--save_state")) == 0
    state = first / "last-state"
    (state / "sd_train_resume.pt").unlink()  # make it look like kohya's state folder
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 2}))
    marker = tmp_path / "code_ran"
    (state / "random_states_0.pkl").write_bytes(pickle.dumps(_Trap(marker), protocol=2))
    out = tmp_path / "resumed"
    assert sdxl_main(_args(assets, out, "--resume", str(state), "--logging_dir", str(tmp_path / "logs"))) == 0
    assert not marker.exists()
    assert "resumed kohya state" in capsys.readouterr().out
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == "4"
    assert _logged_steps(tmp_path / "logs") == [3, 4]  # global_step = current_step (not reset to 0)


def test_pickled_optimizer_state_is_refused(assets, tmp_path, capsys):
    first = tmp_path / "first"
    assert sdxl_main(_args(assets, first, "--max_train_steps", "1", "--save_state")) == 0
    marker = tmp_path / "code_ran"
    (first / "last-state" / "optimizer.bin").write_bytes(pickle.dumps(_Trap(marker), protocol=2))
    code = sdxl_main(_args(assets, tmp_path / "out", "--resume", str(first / "last-state")))
    assert code == 2 and not marker.exists()
    assert "optimizer.bin: cannot be loaded without unpickling code" in capsys.readouterr().err


def test_state_of_another_network_shape_is_a_user_error(assets, tmp_path, capsys):
    first = tmp_path / "first"
    assert sdxl_main(_args(assets, first, "--max_train_steps", "1", "--save_state")) == 0
    code = sdxl_main(_args(assets, tmp_path / "out", "--resume", str(first / "last-state"), "--network_dim", "8"))
    err = capsys.readouterr().err.strip().splitlines()  # the resume policy, before models load
    assert code == 2 and "change the data order or the network: network_dim 4 → 8" in err[-1]
    code = sdxl_main(_args(assets, tmp_path / "out", "--resume", str(first / "last-state"), "--network_dim", "8",
                           "--initial_step", "0"))  # forced past the policy: the weights are checked when loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "do not fit this network" in err[-1] and "Traceback" not in "\n".join(err)
