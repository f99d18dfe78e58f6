"""sd_train.checkpointing: kohya file names, pruning arithmetic, atomic state folders, train_state.json."""

from __future__ import annotations

import json
import os

import pytest

from library.errors import UserError
from sd_train.checkpointing import (atomic_state_dir, epoch_to_remove, model_file_name, options_fingerprint,
                                    prune_after_save, read_train_state, sample_image_name, state_dir_name,
                                    step_to_remove, write_train_state)


@pytest.mark.parametrize("kind, name, index, model, state", [
    ("step", None, 500, "at-step00000500.safetensors", "at-step00000500-state"),
    ("epoch", None, 3, "epoch-000003.safetensors", "epoch-000003-state"),
    ("final", None, None, "last.safetensors", "last-state"),
    ("step", "mylora", 12, "mylora-step00000012.safetensors", "mylora-step00000012-state"),
    ("epoch", "mylora", 10, "mylora-000010.safetensors", "mylora-000010-state"),
    ("final", "mylora", None, "mylora.safetensors", "mylora-state"),
])
def test_file_and_state_names(kind, name, index, model, state):
    assert model_file_name(kind, name, "safetensors", index) == model
    assert state_dir_name(kind, name, index) == state


def test_sample_image_names():
    assert sample_image_name("x", index=1, timestamp="20260101120000", epoch=3) == \
        "sample/x_e000003_01_20260101120000.png"
    assert sample_image_name(None, index=0, timestamp="20260101120000", step=50, seed=42) == \
        "sample/000050_00_20260101120000_42.png"


def test_step_pruning_arithmetic():
    assert step_to_remove(50, 10, 30) == 10       # CLI.md §8 example
    assert step_to_remove(40, 10, 30) == 0
    assert step_to_remove(30, 10, 30) is None
    assert step_to_remove(55, 10, 30) == 20       # r = 24 -> 20
    assert step_to_remove(50, 10, None) is None
    assert step_to_remove(50, None, 30) is None


def test_epoch_pruning_arithmetic():
    assert epoch_to_remove(5, 1, 2) == 3
    assert epoch_to_remove(6, 2, 2) == 2
    assert epoch_to_remove(1, 1, 2) is None
    assert epoch_to_remove(5, 1, None) is None


def test_prune_after_save_files_and_states(tmp_path):
    for step in (10, 20, 30, 40, 50):
        (tmp_path / model_file_name("step", "n", "safetensors", step)).write_bytes(b"x")
        (tmp_path / state_dir_name("step", "n", step)).mkdir()
    new = tmp_path / model_file_name("step", "n", "safetensors", 50)
    removed = prune_after_save(tmp_path, new, "step", "n", 50, 10, 30, ext="safetensors")
    assert removed == str(tmp_path / "n-step00000010.safetensors")
    removed = prune_after_save(tmp_path, tmp_path / "n-step00000050-state", "step", "n", 50, 10, 30)
    assert removed == str(tmp_path / "n-step00000010-state")
    assert sorted(os.listdir(tmp_path))[:2] == ["n-step00000020-state", "n-step00000020.safetensors"]
    assert prune_after_save(tmp_path, new, "step", "n", 50, 10, 30, ext="safetensors") is None
    (tmp_path / "n-000001.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        prune_after_save(tmp_path, tmp_path / "n-000003.safetensors", "epoch", "n", 3, 1, 2, ext="safetensors")
    assert (tmp_path / "n-000001.safetensors").exists()


def test_atomic_state_dir_success_replace_and_failure(tmp_path):
    final = tmp_path / "last-state"
    with atomic_state_dir(final) as tmp:
        assert tmp.name == f".last-state.tmp-{os.getpid()}"
        (tmp / "a.bin").write_bytes(b"1")
        assert not final.exists()
    assert (final / "a.bin").read_bytes() == b"1"
    with atomic_state_dir(final) as tmp:
        (tmp / "b.bin").write_bytes(b"2")
    assert sorted(os.listdir(final)) == ["b.bin"]
    with pytest.raises(RuntimeError):
        with atomic_state_dir(final) as tmp:
            (tmp / "c.bin").write_bytes(b"3")
            raise RuntimeError("crash")
    assert sorted(os.listdir(final)) == ["b.bin"]
    assert sorted(os.listdir(tmp_path)) == ["last-state"]


def test_train_state_round_trip(tmp_path):
    record = {"global_step": 520, "epoch_index": 2, "batch_index_in_epoch": 17, "micro_step_in_accumulation": 0,
              "dataset_seed": 1984123455, "max_train_steps": 1600, "num_train_epochs": 7,
              "options_fingerprint": "ab"}
    write_train_state(tmp_path, 3, 520, record)
    data = read_train_state(tmp_path)
    assert data == {"current_epoch": 3, "current_step": 520, "sd_train": {"format_version": 1, **record}}
    assert list(json.loads((tmp_path / "train_state.json").read_text())) == ["current_epoch", "current_step",
                                                                             "sd_train"]


def test_read_kohya_state_and_errors(tmp_path):
    (tmp_path / "train_state.json").write_text('{"current_epoch": 2, "current_step": 100}')
    assert read_train_state(tmp_path) == {"current_epoch": 2, "current_step": 100}
    (tmp_path / "train_state.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        read_train_state(tmp_path)
    with pytest.raises(UserError, match="not found"):
        read_train_state(tmp_path / "missing")
    write_train_state(tmp_path, 1, 1, None)
    (tmp_path / "train_state.json").write_text('{"current_step": 1, "sd_train": {"format_version": 9}}')
    with pytest.raises(UserError, match="format_version 9"):
        read_train_state(tmp_path)


def test_options_fingerprint_is_canonical():
    a = options_fingerprint({"train_batch_size": 4, "seed": 1, "dataset": ["x", 2.5]})
    b = options_fingerprint({"seed": 1, "dataset": ["x", 2.5], "train_batch_size": 4})
    assert a == b and len(a) == 64
    assert a != options_fingerprint({"train_batch_size": 2, "seed": 1, "dataset": ["x", 2.5]})
    assert options_fingerprint({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
