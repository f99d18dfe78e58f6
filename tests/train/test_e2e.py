"""End-to-end runs of the entry points on tiny checkpoints (ARCHITECTURE.md §6 tier 5)."""

from __future__ import annotations

import pytest
import torch

from library.io.safetensors_io import load_file, read_header
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.train_network import main as sd_main


def _plain_toml(sample_toml, path):
    """A 64×64 TOML over the sample images with 64-pixel bucket steps (valid for SD1 too)."""
    image_dir = next(p for p in sample_toml.parent.iterdir() if p.is_dir())
    path.write_text(f'[general]\ncaption_extension = ".txt"\nresolution = 64\nbatch_size = 2\n'
                    'enable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n'
                    f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{image_dir.as_posix()}"\n')
    return path


def _args(assets, out, *extra):
    ckpt, toml = assets
    return ["--pretrained_model_name_or_path", str(ckpt), "--dataset_config", str(toml),
            "--output_dir", str(out), "--network_module", "networks.lora", "--network_dim", "4",
            "--resolution", "64", "--max_train_steps", "2", "--max_data_loader_n_workers", "0",
            "--seed", "7", "--learning_rate", "1e-3", *extra]


def test_sdxl_unet_only_files_and_metadata(assets, tmp_path):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--save_every_n_steps", "1", "--network_train_unet_only")) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["at-step00000001.safetensors", "last.safetensors", "last_dataset_report.json",
                     "last_report.html", "last_run.json"]
    tensors, meta = read_header(out / "last.safetensors")
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_steps"] == "2" and meta["ss_epoch"] == "1" and meta["ss_network_dim"] == "4"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert read_header(out / "at-step00000001.safetensors")[1]["ss_steps"] == "1"
    weights, _ = load_file(out / "last.safetensors")
    ups = [v for k, v in weights.items() if k.endswith("lora_up.weight")]
    assert any(bool(u.abs().sum() > 0) for u in ups)  # two steps moved the zero-initialised ups


def test_sdxl_with_text_encoders_and_conv(assets, tmp_path):
    out = tmp_path / "out"
    code = sdxl_main(_args(assets, out, "--max_train_steps", "1", "--output_name", "lora",
                           "--network_args", "conv_dim=4", "conv_alpha=1"))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors", "lora_dataset_report.json",
                                                     "lora_report.html", "lora_run.json"]
    tensors, meta = read_header(out / "lora.safetensors")
    prefixes = {k.split("_")[1] for k in tensors}
    assert prefixes == {"te1", "te2", "unet"}
    assert any(len(v["shape"]) == 4 and v["shape"][2:] == [3, 3] for v in tensors.values())
    assert '"conv_dim": "4"' in meta["ss_network_args"]


def test_bad_flag_is_one_line(capsys):
    assert sdxl_main(["--no_such_flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_flag" in err[0]


def test_wrong_family_names_the_right_script(assets, tmp_path, capsys):
    toml = _plain_toml(assets[1], tmp_path / "plain.toml")
    code = sd_main(_args((assets[0], toml), tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sdxl_train_network.py" in err[0]
    assert not (tmp_path / "out" / "last.safetensors").exists()


def test_sd1_trains_and_tags_sd_v1(tmp_path):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    toml = _plain_toml(make_sample_dataset(tmp_path / "d"), tmp_path / "plain.toml")
    assets = (make_tiny_checkpoint("sd15", tmp_path / "sd.safetensors"), toml)
    assert sd_main(_args(assets, tmp_path / "out", "--max_train_steps", "1")) == 0
    tensors, meta = read_header(tmp_path / "out" / "last.safetensors")
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert {k.split("_")[1] for k in tensors} == {"te", "unet"}


def test_sampling_and_logging_do_not_change_training(assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na red square --w 64 --h 64 --s 2 --d 5 --l 4\n")
    plain, sampled = tmp_path / "plain", tmp_path / "sampled"
    assert sdxl_main(_args(assets, plain, "--network_train_unet_only")) == 0
    assert sdxl_main(_args(assets, sampled, "--network_train_unet_only", "--sample_prompts", str(prompts),
                           "--sample_every_n_steps", "1", "--sample_at_first", "--output_name", "x",
                           "--logging_dir", str(tmp_path / "logs"))) == 0
    names = sorted(p.name[:len("x_000000_00")] for p in (sampled / "sample").iterdir())
    assert names == ["x_000000_00", "x_000001_00", "x_000002_00"]
    assert all(p.name.endswith("_5.png") for p in (sampled / "sample").iterdir())
    a, _ = load_file(plain / "last.safetensors")
    b, _ = load_file(sampled / "x.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    event_dir = next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(event_dir))
    events.Reload()
    assert {"loss/current", "loss/average", "lr/unet"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/current")] == [1, 2]


def test_accumulation_logs_kohya_steps(assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--network_train_unet_only", "--max_train_steps", "1",
                           "--gradient_accumulation_steps", "2", "--logging_dir", str(tmp_path / "logs"))) == 0
    assert read_header(out / "last.safetensors")[1]["ss_steps"] == "1"
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/current")] == [0, 1]  # two micro-batches, one step


def test_sd2_v_parameterization(tmp_path):
    from tools.make_sample_dataset import make_sample_dataset
    from tools.make_tiny_model import make_tiny_checkpoint

    toml = _plain_toml(make_sample_dataset(tmp_path / "d"), tmp_path / "plain.toml")
    assets = (make_tiny_checkpoint("sd2", tmp_path / "sd2.safetensors"), toml)
    args = _args(assets, tmp_path / "out", "--max_train_steps", "1", "--v2", "--v_parameterization",
                 "--network_train_unet_only")
    assert sd_main(args) == 0
    _, meta = read_header(tmp_path / "out" / "last.safetensors")
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"


def test_epoch_checkpoints_and_step_pruning(assets, tmp_path):
    toml = _plain_toml(assets[1], tmp_path / "plain.toml")  # 8 images, batch 2: 4 steps per epoch
    out = tmp_path / "out"
    args = _args((assets[0], toml), out, "--network_train_unet_only", "--max_train_epochs", "2",
                 "--save_every_n_epochs", "1", "--save_every_n_steps", "2", "--save_last_n_steps", "1")
    assert sdxl_main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "at-step00000006.safetensors", "epoch-000001.safetensors", "last.safetensors", "last_dataset_report.json",
        "last_report.html", "last_run.json"]
    meta = read_header(out / "epoch-000001.safetensors")[1]
    assert (meta["ss_epoch"], meta["ss_steps"]) == ("1", "4")
    meta = read_header(out / "last.safetensors")[1]
    assert (meta["ss_epoch"], meta["ss_steps"]) == ("2", "8")


def test_save_n_epoch_ratio_sets_the_epoch_cadence(assets, tmp_path):
    toml = _plain_toml(assets[1], tmp_path / "plain.toml")  # 4 steps per epoch
    out = tmp_path / "out"
    args = _args((assets[0], toml), out, "--network_train_unet_only", "--max_train_epochs", "4", "--cache_latents",
                 "--save_n_epoch_ratio", "2")  # floor(4 epochs / 2) = every 2nd epoch
    assert sdxl_main(args) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["epoch-000002.safetensors", "last.safetensors"]


def test_cached_latents_and_text_encoder_outputs(assets, tmp_path):
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--network_train_unet_only", "--cache_latents",
                           "--cache_text_encoder_outputs")) == 0
    tensors, meta = read_header(out / "last.safetensors")
    assert meta["ss_cache_latents"] == "True" and all(k.startswith("lora_unet_") for k in tensors)


def test_unwritable_output_dir_is_one_line_before_models_load(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = sdxl_main(_args(assets, tmp_path / "file" / "out", "--pretrained_model_name_or_path", "missing.ckpt"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {tmp_path / 'file' / 'out'}: --output_dir is not a writable folder "
                                 "(Not a directory); choose another --output_dir"]


def test_blocked_output_file_keeps_the_trained_lora(assets, tmp_path, capsys):
    import os

    out = tmp_path / "out"
    (out / "last.safetensors").mkdir(parents=True)
    assert sdxl_main(_args(assets, out, "--network_train_unet_only", "--max_train_steps", "1")) == 2
    kept = out / f"last.unsaved-{os.getpid()}.safetensors"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {out / 'last.safetensors'}: cannot write it (Is a directory); the new file was kept as {kept}"
    tensors, meta = load_file(kept)
    assert meta["ss_steps"] == "1" and all(bool(torch.isfinite(v).all()) for v in tensors.values())


def test_gradient_checkpointing_reaches_trained_text_encoders_and_keeps_the_result(assets, tmp_path, monkeypatch):
    import library.models.text_encoders as te_mod
    import torch.utils.checkpoint as tuc

    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return tuc.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(te_mod, "checkpoint", counting)
    assert sdxl_main(_args(assets, tmp_path / "plain", "--max_train_steps", "1")) == 0
    assert calls == []
    assert sdxl_main(_args(assets, tmp_path / "ckpt", "--max_train_steps", "1", "--gradient_checkpointing")) == 0
    assert calls and set(calls) == {"CLIPEncoderLayer"}  # both text encoders recompute their layers
    a, _ = load_file(tmp_path / "plain" / "last.safetensors")
    b, _ = load_file(tmp_path / "ckpt" / "last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("lora_te2_") for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_separate_vae_is_named_and_hashed_in_the_metadata(assets, tmp_path):
    from safetensors.torch import save_file

    from library.io.safetensors_io import file_model_hashes

    tensors, _ = load_file(assets[0])
    vae_file = tmp_path / "my_vae.safetensors"
    save_file({k: v for k, v in tensors.items() if k.startswith("first_stage_model.")}, str(vae_file))
    out = tmp_path / "out"
    assert sdxl_main(_args(assets, out, "--max_train_steps", "1", "--network_train_unet_only",
                           "--vae", str(vae_file))) == 0
    meta = read_header(out / "last.safetensors")[1]
    old, new = file_model_hashes(vae_file)
    assert (meta["ss_vae_name"], meta["ss_vae_hash"], meta["ss_new_vae_hash"]) == ("my_vae.safetensors", old, new)
    assert meta["ss_sd_model_name"] == assets[0].name
