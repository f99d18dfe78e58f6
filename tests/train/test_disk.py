"""Disk space: the pre-flight estimate and refusal, and writes that fail on a full disk (a patched writer, and a
real small tmpfs where the machine allows one) without losing what was written before."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from safetensors import SafetensorError

from library.io.safetensors_io import read_header
from library.lora.convert import checkpoint_family
from library.lora.estimate import estimate_lora
from sd_train.sdxl_train_network import main as sdxl_main

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ROOT = Path(__file__).resolve().parents[2]
ENOSPC = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml), "--output_dir", str(out),
            "--network_module", "networks.lora", "--network_dim", "4", "--resolution", "64",
            "--max_data_loader_n_workers", "0", "--seed", "7", "--network_train_unet_only", *extra]


def _shapes(name: str) -> dict[str, list[int]]:
    rows = (line.rstrip("\n").split("\t") for line in (ASSETS / name).read_text().splitlines())
    return {key: [int(x) for x in shape.split("x")] if shape else [] for key, _, shape in rows}


@pytest.mark.parametrize("checkpoint, lora, te", [
    ("sd15", "sd15", True), ("sd15", "sd15_conv", True), ("sdxl_base", "sdxl", True),
    ("sdxl_base", "sdxl_conv", True), ("sdxl_base", "sdxl_unet", False), ("sd2", "sd2", True)])
def test_lora_size_from_the_checkpoint_header_matches_the_real_files(checkpoint, lora, te):
    """Counted from full-size checkpoint shapes vs kohya's real key tables; SD2 counts the unused last text-encoder
    layer (about 2 % more)."""
    real = sum(math.prod(s) if s else 1 for s in _shapes(f"lora_keys_{lora}.tsv").values())
    conv = 4 if lora.endswith("conv") else None
    shapes = _shapes(f"{checkpoint}_ldm_keys.tsv")
    counted = estimate_lora(shapes, checkpoint_family(shapes), 4, conv, text_encoders=te)
    estimate = counted.params + counted.modules  # the alphas are one value per module
    assert estimate == real if checkpoint != "sd2" else real < estimate < 1.03 * real


def _free(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("sd_train.disk.shutil.disk_usage", lambda path: usage(10**12, 10**12 - free, free))


def test_too_little_space_is_refused_before_models_load(plain_assets, tmp_path, capsys, monkeypatch):
    import library.checkpoint.io as cio

    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    _free(monkeypatch, 100_000)
    out = tmp_path / "out"
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "8", "--save_every_n_steps", "2",
                           "--save_state")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {out}: the run will write about ")
    assert "(4 LoRA file(s) of " in line and ", 4 state folder(s) of " in line and "only 100.0 kB are free" in line
    assert line.endswith("keep fewer files (--save_last_n_epochs / --save_last_n_steps), or pass --force to start "
                         "anyway")


def test_disk_caches_count_where_the_images_are(assets, plain_assets, tmp_path, capsys, monkeypatch):
    """Latent and text-encoder caches are written next to the images: 8 images × (latent 4×8×8 floats, flipped
    none) + SDXL text-encoder outputs (77 × (768 + 1280) + 1280 floats each), with a 4 kB allowance per file."""
    import library.checkpoint.io as cio

    monkeypatch.setattr(cio, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    _free(monkeypatch, 100_000)
    image_dir = next(p for p in assets[1].parent.iterdir() if p.is_dir())  # the images of plain_assets' TOML
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--max_train_steps", "1", "--cache_latents_to_disk",
                           "--cache_text_encoder_outputs_to_disk", "--cache_text_encoder_outputs")) == 2
    per_image = 4 * 4 * 8 * 8 + 4096 + 4 * (77 * (768 + 1280) + 1280) + 4096
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"caches next to the images in {image_dir}" in line
    total = float(line.split("the run will write about ")[1].split(" MB")[0]) * 1e6
    assert 8 * per_image - 1e5 <= total  # the same filesystem as the LoRA files: one sum, caches included
    without = _sum_without_caches(plain_assets, tmp_path, capsys, monkeypatch)
    assert abs(total - without - 8 * per_image) < 1.5e5  # the 0.1 MB rounding of two printed sums


def _sum_without_caches(plain_assets, tmp_path, capsys, monkeypatch) -> float:
    _free(monkeypatch, 1000)
    assert sdxl_main(_args(plain_assets, tmp_path / "out2", "--max_train_steps", "1")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    text = line.split("the run will write about ")[1].split(" on this")[0]
    value, unit = text.split()
    return float(value) * {"kB": 1e3, "MB": 1e6}[unit]


def test_force_starts_anyway_with_a_warning(plain_assets, tmp_path, capsys, monkeypatch):
    _free(monkeypatch, 100_000)
    out = tmp_path / "out"
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "1", "--force")) == 0
    assert "are free; starting anyway (--force)" in capsys.readouterr().err
    assert (out / "last.safetensors").is_file()


def _full_disk_for(monkeypatch, predicate) -> None:
    """safetensors writes part of the file, then reports a full disk, for target paths matching ``predicate``."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if predicate(Path(filename)):
            Path(filename).write_bytes(b"\0" * 1000)
            raise SafetensorError(ENOSPC)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_full_disk_at_the_final_save_keeps_earlier_files_and_is_one_line(plain_assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _full_disk_for(monkeypatch, lambda p: "last" in p.name)
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "4", "--save_every_n_steps", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error: ")]) == 1
    assert err[-1].startswith(f"error: {out / 'last.safetensors'}: could not be written ({ENOSPC}); it needs about ")
    assert err[-1].endswith(f"are free there; the files written before are intact (newest LoRA: "
                            f"{out / 'at-step00000002.safetensors'}); free some space (or pass --fallback_output_dir) "
                            "and resume from the newest state folder, if any")
    assert sorted(p.name for p in out.iterdir()) == ["at-step00000002.safetensors", "last_dataset_report.json",
                                                     "last_report.html", "last_run.json"]
    assert read_header(out / "at-step00000002.safetensors")[1]["ss_steps"] == "2"


def test_fallback_output_dir_takes_the_final_lora(plain_assets, tmp_path, capsys, monkeypatch):
    out, spare = tmp_path / "out", tmp_path / "spare"
    _full_disk_for(monkeypatch, lambda p: p.parent == out)
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "2", "--fallback_output_dir", str(spare))) == 0
    assert f"written to --fallback_output_dir instead: {spare / 'last.safetensors'}" in capsys.readouterr().err
    assert read_header(spare / "last.safetensors")[1]["ss_steps"] == "2"
    assert sorted(p.name for p in out.iterdir()) == ["last_dataset_report.json", "last_report.html", "last_run.json"]


def test_failed_state_write_is_reported_and_training_goes_on(plain_assets, tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError from its zip writer; the step state is dropped whole."""
    import sd_train.resume as resume

    real, out = resume.torch.save, tmp_path / "out"

    def save(obj, path, *a, **k):
        if "step00000002" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1088 vs 1024")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(resume.torch, "save", save)
    assert sdxl_main(_args(plain_assets, out, "--max_train_steps", "4", "--save_every_n_steps", "2",
                           "--save_state")) == 0
    err = capsys.readouterr().err
    assert (f"{out / 'at-step00000002-state'}: could not be written ([enforce fail at inline_container.cc:626] . "
            "unexpected pos 1088 vs 1024); it needs about") in err and "; training goes on" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "at-step00000002.safetensors", "last-state", "last.safetensors", "last_dataset_report.json", "last_report.html",
        "last_run.json"]


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a mount namespace (tmpfs); the patched "
                    "writer tests above cover the behaviour")
def test_real_full_tmpfs(plain_assets, tmp_path):
    """A 2 MB tmpfs as --output_dir: the LoRAs (about 600 kB each) fill it after three steps; each failed write is
    one line, every file left there is complete, no temporary file remains, and the run ends with exit 1 at the
    final save."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = _args(plain_assets, mnt / "out", "--max_train_steps", "4", "--save_every_n_steps", "1", "--force")
    script = (f"mount -t tmpfs -o size=2m tmpfs {mnt} && {sys.executable} {ROOT / 'sdxl_train_network.py'} "
              f"{' '.join(args)}; code=$?; ls -a {mnt / 'out'}; "
              f"{sys.executable} -c 'import sys; from library.io.safetensors_io import read_header; "
              f"[read_header(p) for p in sys.argv[1:]]' {mnt / 'out'}/*.safetensors && exit $code")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "could not be written" in line]
    assert errors and errors[-1].startswith(f"error: {mnt / 'out' / 'last.safetensors'}: could not be written (")
    assert all("; training goes on" in line for line in errors[:-1])
    listing = done.stdout.split()
    assert not [name for name in listing if ".tmp-" in name]
    assert {"at-step00000001.safetensors", "at-step00000002.safetensors", "at-step00000003.safetensors"} <= set(listing)
    assert "last.safetensors" not in listing


def test_malformed_conv_dim_is_the_plugins_one_line_not_an_estimate_traceback(plain_assets, tmp_path, capsys):
    """The size estimate skips a ``conv_dim`` it cannot read; the plugin then names the value in one line."""
    assert sdxl_main(_args(plain_assets, tmp_path / "out", "--max_train_steps", "1",
                           "--network_args", "conv_dim=nope")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "conv_dim" in err.strip().splitlines()[-1] and "nope" in err.strip().splitlines()[-1]
