"""Configurations kohya users published, run through the real entry points (issue #18).

The files in ``real_configs/`` keep their sources' keys and values; only paths, sizes, step counts and
hardware-only settings (xformers, fp16 on a CPU, 8-bit optimizers) are adapted, as each file's header says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from library.io.safetensors_io import read_header
from sd_train.sdxl_train_network import main as sdxl_main
from sd_train.train_network import main as sd_main

CONFIGS = Path(__file__).parent / "real_configs"


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    from tools.make_tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint("sd15", tmp_path_factory.mktemp("sd15") / "sd15.safetensors")


@pytest.fixture
def images(tmp_path) -> Path:
    """The sample dataset's ``10_sks shape`` folder (8 images of 64–128 px with .txt captions)."""
    from tools.make_sample_dataset import make_sample_dataset

    return make_sample_dataset(tmp_path / "data").parent / "10_sks shape"


def _config(name: str, folder: Path, **paths) -> str:
    """``real_configs/name`` with its ``{placeholders}`` filled in, written to ``folder``; returns the path."""
    text = (CONFIGS / name).read_text(encoding="utf-8")
    target = folder / name
    target.write_text(text.format(**{k: Path(v).as_posix() for k, v in paths.items()}), encoding="utf-8")
    return str(target)


def _masks_for(images: Path, folder: Path) -> Path:
    folder.mkdir()
    for png in images.glob("*.png"):
        with Image.open(png) as img:
            Image.new("L", img.size, 255).save(folder / png.name)
    return folder


def test_cyber_meow_sectioned_lycoris_config(sd15, images, tmp_path):
    """Sectioned, ``resume = false``, ``training_comment = ""``, ``lr_scheduler_type = ""``,
    ``resume_from_huggingface = false``, a scalar ``text_encoder_lr``, ``network_dropout = 0``, LoHa through
    lycoris.kohya, ``max_token_length = 150``."""
    out = tmp_path / "out"
    cfg = _config("cyber_meow_kohya_network_config.toml", tmp_path, model=sd15, train_data_dir=images.parent,
                  out=out, logs=tmp_path / "logs_training")
    assert sd_main(["--config_file", cfg]) == 0
    _, meta = read_header(out / "name.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya" and '"algo": "loha"' in meta["ss_network_args"]
    assert (meta["ss_training_comment"], meta["ss_max_token_length"], meta["ss_text_encoder_lr"]) == ("", "150",
                                                                                                      "0.0002")
    assert (meta["ss_network_dropout"], meta["ss_clip_skip"], meta["ss_seed"]) == ("0.0", "2", "23")
    assert list((tmp_path / "logs_training").iterdir())[0].name.startswith("lycoris_")


def test_kohya_ss_gui_written_toml_with_masked_loss_dataset(sd15, images, tmp_path, caplog, capsys):
    """A GUI-written TOML (``epoch``, ``noise_offset_type``, ``persistent_data_loader_workers = 1``,
    ``max_token_length = 75``, ``dynamo_backend = "no"``, empty lists) with the GUI's own masked-loss dataset
    (SD1.5, ``bucket_reso_steps = 32`` on a conditioning dataset, which kohya does not check)."""
    out = tmp_path / "out"
    dataset = _config("kohya_ss_gui_dataset-masked_loss.toml", tmp_path, images=images,
                      masks=_masks_for(images, tmp_path / "masked_loss"))
    prompts = tmp_path / "prompt.txt"
    prompts.write_text("a painting of a gas mask , by darius kawasaki\n", encoding="utf-8")
    cfg = _config("kohya_ss_gui_config_lora.toml", tmp_path, dataset=dataset, logs=tmp_path / "logs", out=out,
                  model=sd15, prompts=prompts)
    with caplog.at_level(logging.WARNING):
        assert sd_main(["--config_file", cfg]) == 0
    _, meta = read_header(out / "locon-AdamW8bit-masked_loss-toml.safetensors")
    assert (meta["ss_max_token_length"], meta["ss_noise_offset"], meta["ss_seed"]) == ("75", "0.05", "1234")
    assert meta["ss_steps"] == "2"
    assert f"{cfg}: epoch = 1 is a kohya_ss GUI setting, not a training option; ignored (as kohya does): delete " \
           "it; max_train_epochs / max_train_steps set the run length" in caplog.messages
    assert ("warning: datasets[0].bucket_reso_steps = 32 is not a multiple of 64; kohya does not check it for "
            "conditioning (masked_loss) datasets, so buckets use 32-pixel steps") in capsys.readouterr().out
    info = json.loads(meta["ss_datasets"])[0]["bucket_info"]["buckets"].values()
    assert {tuple(b["resolution"]) for b in info} == {(32, 32), (32, 64), (64, 32), (64, 64)}  # 32-pixel steps


def test_hollowstrawberry_xl_notebook_config(tiny_sdxl, images, tmp_path):
    """Sections network_arguments / optimizer_arguments / training_arguments / saving_arguments,
    ``text_encoder_lr = 0.0`` with ``network_train_unet_only``, ``max_token_length = 225``, and the notebook's
    dataset config ([general] after [[datasets]])."""
    out = tmp_path / "output"
    dataset = _config("hollowstrawberry_xl_dataset_config.toml", tmp_path, images=images)
    cfg = _config("hollowstrawberry_xl_training_config.toml", tmp_path, model=tiny_sdxl, out=out,
                  logs=tmp_path / "log")
    assert sdxl_main(["--config_file", cfg, "--dataset_config", dataset]) == 0
    tensors, meta = read_header(out / "example.safetensors")
    assert (meta["ss_max_token_length"], meta["ss_lr_scheduler"], meta["ss_min_snr_gamma"]) == (
        "225", "cosine_with_restarts", "8.0")
    assert all(k.startswith("lora_unet_") for k in tensors)


def test_kohya_docs_command_line_with_scheduler_class_and_odd_token_length(sd15, images, tmp_path, caplog):
    """kohya's docs/train_network.md command line (adapted: paths, 2 steps instead of 10 epochs, AdamW8bit ->
    AdamW, fp16 -> no) over the DreamBooth part of docs/config_README-en.md's dataset example, plus a TOML with
    ``lr_scheduler_type = "CosineAnnealingLR"`` and its ``lr_scheduler_args`` (a class name resolved in
    torch.optim.lr_scheduler) and ``max_token_length = 128`` (outside argparse's choices; kohya's tokenizer uses
    one 75-token chunk)."""
    out = tmp_path / "out"
    dataset = _config("kohya_docs_dataset_config.toml", tmp_path, images=images)
    extra = tmp_path / "extra.toml"
    extra.write_text('[optimizer_arguments]\nlr_scheduler_type = "CosineAnnealingLR"\nlr_scheduler_args = '
                     '["T_max=100"]\n\n[training_arguments]\nmax_token_length = 128\n', encoding="utf-8")
    argv = [f"--pretrained_model_name_or_path={sd15}", f"--dataset_config={dataset}", f"--output_dir={out}",
            "--output_name=my_lora", "--save_model_as=safetensors", "--network_module=networks.lora",
            "--network_dim=16", "--network_alpha=1", "--learning_rate=1e-4", "--optimizer_type=AdamW",
            "--lr_scheduler=constant", "--sdpa", "--max_train_steps=2", "--save_every_n_epochs=1",
            "--mixed_precision=no", "--gradient_checkpointing", "--max_data_loader_n_workers=0",
            f"--config_file={extra}"]
    with caplog.at_level(logging.WARNING):
        assert sd_main(argv) == 0
    _, meta = read_header(out / "my_lora.safetensors")
    assert (meta["ss_max_token_length"], meta["ss_lr_scheduler"], meta["ss_network_dim"]) == ("128", "constant",
                                                                                              "16")
    assert any(m.endswith("max_token_length = 128: not one of 75, 150, 225; captions use 75 tokens (1 chunk(s) "
                          "of 75), as in kohya") for m in caplog.messages)
