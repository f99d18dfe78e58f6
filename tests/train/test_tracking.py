"""W&B and tracker options (CLI.md §5.10, §10; TRAINING.md §13): an offline W&B run of a tiny SDXL training.

The run's history is read back from W&B's own transaction log (``run-*.wandb``: LevelDB log blocks of
``wandb_internal_pb2.Record`` protobufs); offline runs of wandb 0.31 write no ``wandb-summary.json``.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb  # the optional extra `wandb`; requirements/ci.txt installs it

from sd_train import tracking
from sd_train.options.logging import LoggingOptions
from sd_train.sdxl_train_network import main as sdxl_main

KEY = "k3y" * 13 + "x"  # 40 characters, like a W&B API key
BLOCK, HEADER = 32768, 7  # LevelDB log block size; ':W&B' + magic (2 bytes) + version (1 byte)


def _records(path: Path):
    """Every protobuf ``Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if pos + HEADER + length > len(data):  # a chunk still being written
            return
        parts.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _finished_records(wandb_dir: Path, timeout: float = 60.0) -> tuple[Path, list]:
    """The one offline run file and its records, once W&B's service has written the final ``exit`` record
    (it writes the file asynchronously; under load that can end a moment after ``wandb.finish()``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
        records = list(_records(found[0])) if len(found) == 1 else []
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            assert len(found) == 1 and "exit" in kinds, f"offline runs {found}, records {kinds}"
            return found[0], records
        time.sleep(0.5)


def _offline_run(wandb_dir: Path) -> dict:
    """Run name/project, config keys and history rows (``{key: value}``) of the one offline run."""
    path, records = _finished_records(wandb_dir)
    run, config, history = None, {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {}
            for item in record.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            history.append({k: v for k, v in row.items() if not k.startswith("_")})
    return {"name": run.display_name, "project": run.project, "config": config, "history": history,
            "dir": path.parent}


@pytest.fixture(scope="module")
def assets(tiny_sdxl, tmp_path_factory):
    from tools.make_sample_dataset import make_sample_dataset

    root = tmp_path_factory.mktemp("wandb_assets")
    ckpt = tiny_sdxl
    image_dir = next(p for p in make_sample_dataset(root / "data").parent.iterdir() if p.is_dir())
    toml = root / "two_batches.toml"  # 8 images, batch 4: an epoch is 2 steps
    toml.write_text('[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 4\n'
                    'enable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n')
    prompts = root / "prompts.txt"
    prompts.write_text("a red cube --w 64 --h 64 --s 2 --d 3\n")
    return ckpt, toml, prompts


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline and silent, its folders and HOME (~/.netrc, ~/.cache) under ``tmp_path``."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb"),
                        "HOME": str(tmp_path / "home"), "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "wandb").mkdir()
    (tmp_path / "home").mkdir()
    wandb.teardown()  # settings are read from the environment when the W&B session starts
    yield tmp_path / "wandb"
    wandb.teardown()


def _args(assets, out, *extra):
    ckpt, toml, _ = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--max_data_loader_n_workers", "0",
            "--seed", "5", "--learning_rate", "1e-3", "--network_train_unet_only", *extra]


def test_wandb_run_logs_kohya_scalars_samples_and_no_key(assets, tmp_path, offline_wandb):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--max_train_epochs", "1", "--log_with", "wandb", "--wandb_run_name", "r1",
                           "--wandb_api_key", KEY, "--log_config", "--sample_prompts", str(assets[2]),
                           "--sample_every_n_steps", "2")) == 0
    run = _offline_run(offline_wandb)
    assert (run["name"], run["project"]) == ("r1", "network_train")
    steps = [r for r in run["history"] if "loss/current" in r]
    assert [sorted(r) for r in steps] == [["epoch", "global_step", "loss/average", "loss/current", "lr/unet",
                                           "sd_train/nonfinite_steps_skipped"]] * 2
    assert [(r["global_step"], r["epoch"], r["lr/unet"]) for r in steps] == [(1, 1, 1e-3), (2, 1, 1e-3)]
    assert steps[0]["loss/average"] == steps[0]["loss/current"] > 0
    assert steps[1]["loss/average"] == pytest.approx((steps[0]["loss/current"] + steps[1]["loss/current"]) / 2)
    (sample,) = [r for r in run["history"] if "sample_0/path" in r]  # the step-2 sample image
    assert (sample["global_step"], sample["sample_0/caption"], sample["sample_0/width"]) == (2, "a red cube", 64)
    assert (run["dir"] / "files" / sample["sample_0/path"]).is_file()
    (epoch,) = [r for r in run["history"] if "loss/epoch_average" in r]  # not dropped by W&B's step order
    assert epoch == {"loss/epoch_average": pytest.approx(steps[1]["loss/average"]), "global_step": 2, "epoch": 1}
    config = run["config"]  # --log_config: options without secrets, kohya's path options, absolute paths
    assert config["network_dim"] == 4 and config["wandb_run_name"] == "r1" and config["log_with"] == "wandb"
    assert not {"wandb_api_key", "huggingface_token", "output_dir", "pretrained_model_name_or_path",
                "dataset_config", "sample_prompts"} & config.keys()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5 and not [p for p in written if KEY.encode() in p.read_bytes()]
    assert not (tmp_path / "home" / ".netrc").exists()


def test_all_writes_tensorboard_and_wandb_into_the_run_folder(assets, tmp_path, offline_wandb):
    trackers = tmp_path / "trackers.toml"
    trackers.write_text('[wandb]\ntags = ["tiny"]\n[tensorboard]\nflush_secs = 5\n')
    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", "1", "--log_with", "all",
                           "--logging_dir", str(tmp_path / "logs"), "--log_prefix", "p_", "--wandb_run_name", "r2",
                           "--log_tracker_name", "proj", "--log_tracker_config", str(trackers))) == 0
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith("p_") and list(run_dir.rglob("events.out.tfevents.*"))
    assert not list(offline_wandb.iterdir())  # W&B went to the run folder (kohya: WANDB_DIR = run folder)
    run = _offline_run(run_dir)
    assert (run["name"], run["project"]) == ("r2", "proj")
    assert not [k for k in run["config"] if not k.startswith("_")]  # no --log_config
    assert [r["global_step"] for r in run["history"] if "loss/current" in r] == [1]
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert next(r.run.tags for r in _records(path) if r.WhichOneof("record_type") == "run") == ["tiny"]


def test_output_config_never_has_the_key(tmp_path):
    toml = tmp_path / "run.toml"
    assert sdxl_main(["--output_config", "--config_file", str(toml), "--log_with", "wandb",
                      "--wandb_run_name", "r1", "--wandb_api_key", KEY]) == 0
    text = toml.read_text()
    assert 'wandb_run_name = "r1"' in text and KEY not in text and "wandb_api_key" not in text


def test_missing_wandb_is_one_line_before_models_load(assets, tmp_path, monkeypatch, capsys):
    from sd_train.trainer import Trainer

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setattr(Trainer, "_setup_models", lambda self: pytest.fail("models loaded before the check"))
    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", "1", "--log_with", "wandb")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --log_with wandb needs the wandb package: pip install wandb"]


def test_tensorboard_needs_logging_dir(assets, tmp_path, monkeypatch, capsys):
    from sd_train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_setup_models", lambda self: pytest.fail("models loaded before the check"))
    assert sdxl_main(_args(assets, tmp_path / "out", "--max_train_steps", "1", "--log_with", "all")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --log_with all needs --logging_dir (TensorBoard writes its files there)"]


def test_tracker_kinds():
    assert tracking.tracker_kinds(None, None) == []
    assert tracking.tracker_kinds(None, "logs") == ["tensorboard"]
    assert tracking.tracker_kinds("wandb", "logs") == ["wandb"]
    assert tracking.tracker_kinds("all", "logs") == ["tensorboard", "wandb"]


def test_tracker_config_toml_is_merged_with_the_flags(tmp_path):
    toml = tmp_path / "trackers.toml"
    toml.write_text('[wandb]\ntags = ["a"]\nname = "from_toml"\n[wandb.settings]\nconsole = "off"\n'
                    '[tensorboard]\nflush_secs = 5\n')
    opts = LoggingOptions(log_with="wandb", log_tracker_config=str(toml), wandb_run_name="r1", wandb_api_key=KEY)
    tables = tracking.load_tracker_config(str(toml))
    assert tables["tensorboard"] == {"flush_secs": 5}
    assert tracking.wandb_init_kwargs(opts, "logs/run", tables["wandb"]) == {
        "tags": ["a"], "name": "from_toml", "dir": "logs/run", "settings": {"console": "off", "api_key": KEY}}
    plain = LoggingOptions(log_with="wandb", wandb_run_name="r1")
    assert tracking.wandb_init_kwargs(plain, None, {}) == {"name": "r1"}


@pytest.mark.parametrize("text, message", [
    (None, "file not found (--log_tracker_config)"),
    ("[wandb\n", "invalid TOML (--log_tracker_config)"),
    ('wandb = "x"\n', "'wandb' must be a table of init arguments, e.g. [wandb] (--log_tracker_config)"),
])
def test_bad_tracker_config_is_a_user_error(tmp_path, text, message):
    from library.errors import UserError

    path = tmp_path / "trackers.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        tracking.load_tracker_config(str(path))


class _FakeRun:
    def __init__(self):
        self.rows = []

    def log(self, row, **kwargs):
        self.rows.append(row)


def test_wandb_rows_carry_global_step_and_epoch():
    progress = SimpleNamespace(global_step=7, epoch=2)  # epoch 3 (from 1) is running
    tracker = tracking.KohyaWandbTracker("p", lambda: progress, name="r")
    tracker.run = _FakeRun()
    tracker.log({"loss/current": 0.5}, step=5)  # a lazily flushed row of step 5
    tracker.log({"loss/epoch_average": 0.4}, step=2)  # kohya logs epoch scalars at step = epoch
    tracker.log({"loss/validation/epoch_divergence": 0.1}, step=3)
    tracker.log({"x": 1})
    assert tracker.run.rows == [{"loss/current": 0.5, "global_step": 5, "epoch": 3},
                                {"loss/epoch_average": 0.4, "global_step": 7, "epoch": 2},
                                {"loss/validation/epoch_divergence": 0.1, "global_step": 7, "epoch": 3},
                                {"x": 1, "global_step": 7, "epoch": 3}]


def test_sanitized_config_drops_secrets_and_paths():
    from sd_train.cli import parse_options

    opts = parse_options(["--pretrained_model_name_or_path", "rel/model.safetensors", "--output_dir", "out",
                          "--network_weights", "/abs/w.safetensors", "--sample_prompts", "p.txt",
                          "--wandb_api_key", KEY, "--base_weights", "a.safetensors", "/abs/b.safetensors",
                          "--network_dim", "8"],
                         "sdxl")
    config = tracking.sanitized_config(opts)
    assert config["sample_prompts"] == "p.txt" and config["network_dim"] == 8
    assert not {"pretrained_model_name_or_path", "output_dir", "network_weights", "wandb_api_key",
                "base_weights"} & config.keys()
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in config.values())
