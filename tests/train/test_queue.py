"""sd_train_queue: configs checked before anything trains, one process per run, a failure does not stop
the queue (--continue_on_error), the final table, resuming by skipping finished outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from library.errors import UserError
from sd_train import queue
from tools.make_tiny_model import make_tiny_checkpoint


def _config(folder, name, ckpt, data, out, **extra):
    lines = {"pretrained_model_name_or_path": str(ckpt), "dataset_config": str(data), "output_dir": str(out),
             "output_name": name, "network_module": "networks.lora", "network_dim": 4, "max_train_steps": 1,
             "max_data_loader_n_workers": 0, "seed": 1, "learning_rate": 1e-3, **extra}
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_three_configs_one_failing_table_shows_two_outputs_and_the_error(assets, tmp_path, capsys):
    ckpt, data = assets
    runs, out, logs = tmp_path / "runs", tmp_path / "out", tmp_path / "logs"
    runs.mkdir()
    _config(runs, "a", ckpt, data, out)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")  # exists: passes the queue's check
    _config(runs, "b", ckpt, data, out, pretrained_model_name_or_path=str(broken))
    _config(runs, "c", ckpt, data, out)
    (runs / "data.toml").write_text(data.read_text())  # a dataset config in the folder is not a run

    code = queue.main([str(runs), "--continue_on_error", "--entry", "sdxl", "--log_dir", str(logs)])
    text = capsys.readouterr().out
    assert code == 1
    table = text[text.index("#  config"):].splitlines()
    assert len(table) == 4
    assert table[1].split()[:3] == ["1", str(runs / "a.toml"), "done"]
    assert table[2].split()[:3] == ["2", str(runs / "b.toml"), "failed:"]
    assert table[3].split()[:3] == ["3", str(runs / "c.toml"), "done"]
    assert f"error: {broken}: " in table[2] and "exit " in table[2]
    assert str(out / "a.safetensors") in table[1] and str(out / "c.safetensors") in table[3]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["a.safetensors", "c.safetensors"]
    loss = json.loads((logs / "01_a.result.json").read_text())
    assert loss["steps"] == 1 and f"{loss['final_loss']:.4f}" == table[1].split()[-1]
    assert f"error: {broken}: " in (logs / "02_b.log").read_text()

    # run again: finished configs are skipped, nothing trains; --rerun trains them again
    (runs / "b.toml").unlink()
    assert queue.main([str(runs), "--log_dir", str(logs)]) == 0
    table = capsys.readouterr().out.splitlines()[-2:]
    assert [row.split()[2:5] for row in table] == [["skipped", "(output", "exists)"]] * 2
    before = (out / "a.safetensors").stat().st_mtime_ns
    assert queue.main([str(runs / "a.toml"), "--rerun", "--log_dir", str(logs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[2] == "done"
    assert (out / "a.safetensors").stat().st_mtime_ns != before


def test_a_config_that_fails_its_check_stops_the_queue_before_anything_trains(assets, tmp_path, capsys):
    ckpt, data = assets
    _config(tmp_path, "good", ckpt, data, tmp_path / "out")
    bad = _config(tmp_path, "typo", ckpt, data, tmp_path / "out", netwrok_dim=8)
    missing = _config(tmp_path, "nodata", ckpt, tmp_path / "none.toml", tmp_path / "out")
    code = queue.main([str(tmp_path / "good.toml"), str(bad), str(missing), "--log_dir", str(tmp_path / "logs")])
    text = capsys.readouterr().out
    assert code == 1 and not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()
    assert f"{bad}: invalid: {bad}: unknown key 'netwrok_dim'. Did you mean 'network_dim'?" in text
    assert f"{missing}: invalid: " in text and "none.toml" in text
    assert "2 config(s) failed the check; nothing was trained" in text
    rows = text[text.index("#  config"):].splitlines()[1:]
    assert [r.split()[2] for r in rows] == ["checked", "invalid:", "invalid:"]


def test_dry_run_checks_everything_and_trains_nothing(assets, tmp_path, capsys):
    ckpt, data = assets
    a = _config(tmp_path, "a", ckpt, data, tmp_path / "out")
    b = _config(tmp_path, "b", ckpt, data, tmp_path / "out", network_module="no_such.plugin")
    assert queue.main([str(a), str(b), "--dry_run"]) == 1
    text = capsys.readouterr().out
    assert f"{a}: checked" in text
    assert f"{b}: invalid: --network_module no_such.plugin: cannot import it" in text
    assert not (tmp_path / "out").exists()
    assert queue.main([str(a), "--dry_run"]) == 0


def test_a_killed_run_is_reported_and_the_queue_goes_on(assets, tmp_path, monkeypatch):
    ckpt, data = assets
    items = [queue.QueueItem(_config(tmp_path, n, ckpt, data, tmp_path / "out"), "sdxl") for n in ("a", "b")]

    class Killed:  # what Popen reports for a child the kernel's OOM killer ended
        def __init__(self, *args, **kwargs):
            pass

        def wait(self):
            return -9

    monkeypatch.setattr(queue.subprocess, "Popen", Killed)
    for index, item in enumerate(items, start=1):
        queue.check_config(item)
        queue.run_item(item, index, tmp_path / "logs")
    assert [(i.status, i.error) for i in items] == [("failed", "killed by signal 9")] * 2


def test_folder_order_entry_detection_and_errors(tmp_path):
    sd = make_tiny_checkpoint("sd15", tmp_path / "sd1.safetensors")
    (tmp_path / "b.json").write_text(json.dumps({"pretrained_model_name_or_path": str(sd)}))
    (tmp_path / "a.toml").write_text('pretrained_model_name_or_path = "stabilityai/sdxl"\n')
    (tmp_path / "preset.json").write_text(json.dumps({"LoRA_type": "Standard", "sdxl": False}))
    (tmp_path / "notes.txt").write_text("not a config")
    (tmp_path / "c.toml").write_text(f'pretrained_model_name_or_path = "{tmp_path / "xl.safetensors"}"\n')
    make_tiny_checkpoint("sdxl", tmp_path / "xl.safetensors")
    found = queue.collect_configs([str(tmp_path)])
    assert [p.name for p in found] == ["a.toml", "b.json", "c.toml", "preset.json"]
    assert [queue.detect_entry(p, "auto") for p in found[1:]] == ["sd", "sdxl", "sd"]
    assert queue.detect_entry(found[1], "sdxl") == "sdxl" and queue.detect_entry(found[0], "sd") == "sd"
    with pytest.raises(UserError, match="a.toml: cannot tell the model family .*; pass --entry"):
        queue.detect_entry(found[0], "auto")  # a hub id: only its download would tell
    with pytest.raises(UserError, match="nothing.toml: no such config file or folder"):
        queue.collect_configs([str(tmp_path / "nothing.toml")])


def test_module_and_console_script_run():
    """``python -m sd_train.queue`` is the documented second way in."""
    result = subprocess.run([sys.executable, "-m", "sd_train.queue", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--continue_on_error" in result.stdout and "--rerun" in result.stdout
