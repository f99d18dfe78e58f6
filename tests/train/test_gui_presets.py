"""kohya_ss GUI presets (LoRA tab JSON) as --config_file: each mapped to the flags the GUI's lora_gui.py gives
sd-scripts, exactly. The presets start from the GUI's widget defaults (kohya_gui/class_*.py, lora_gui.py)."""

from __future__ import annotations

import json
import logging

import pytest
import toml

from library.errors import UserError
from library.io.safetensors_io import read_header
from sd_train.cli import load_config_file
from sd_train.sdxl_train_network import main as sdxl_main

GUI_DEFAULTS = {  # what the LoRA tab saves when nothing is changed (sdxl unticked)
    "LoRA_type": "Standard", "LyCORIS_preset": "full", "adaptive_noise_scale": 0, "additional_parameters": "",
    "bucket_no_upscale": True, "bucket_reso_steps": 64, "bypass_mode": False, "cache_latents": True,
    "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0, "caption_dropout_rate": 0,
    "caption_extension": ".txt", "clip_skip": 1, "color_aug": False, "constrain": 0.0, "conv_alpha": 1, "conv_dim": 1,
    "dataset_config": "", "debiased_estimation_loss": False, "decompose_both": False, "dim_from_weights": False,
    "dora_wd": False, "dynamo_backend": "no", "dynamo_mode": "default", "dynamo_use_dynamic": False,
    "dynamo_use_fullgraph": False, "enable_bucket": True, "epoch": 1, "extra_accelerate_launch_args": "",
    "factor": -1, "flip_aug": False, "flux1_checkbox": False, "fp8_base": False, "full_bf16": False,
    "full_fp16": False, "gpu_ids": "", "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
    "highvram": False, "huber_c": 0.1, "huber_scale": 1, "huber_schedule": "snr", "ip_noise_gamma": 0,
    "ip_noise_gamma_random_strength": False, "keep_tokens": 0, "learning_rate": 0.0001, "log_tracker_config": "",
    "log_tracker_name": "", "log_with": "", "logging_dir": "", "loraplus_lr_ratio": 0,
    "loraplus_text_encoder_lr_ratio": 0, "loraplus_unet_lr_ratio": 0, "loss_type": "l2", "lowvram": False,
    "lr_scheduler": "cosine", "lr_scheduler_args": "", "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1,
    "lr_scheduler_type": "", "lr_warmup": 10, "lr_warmup_steps": 0, "main_process_port": 0, "masked_loss": False,
    "max_bucket_reso": 2048, "max_data_loader_n_workers": 0, "max_grad_norm": 1, "max_resolution": "512,512",
    "max_timestep": 1000, "max_token_length": 75, "max_train_epochs": 0, "max_train_steps": 1600,
    "mem_eff_attn": False, "min_bucket_reso": 256, "min_snr_gamma": 0, "min_timestep": 0, "mixed_precision": "fp16",
    "model_list": "custom", "module_dropout": 0, "multi_gpu": False, "multires_noise_discount": 0.3,
    "multires_noise_iterations": 0, "network_alpha": 1, "network_dim": 8, "network_dropout": 0, "network_weights": "",
    "noise_offset": 0, "noise_offset_random_strength": False, "noise_offset_type": "Original",
    "num_cpu_threads_per_process": 2, "num_machines": 1, "num_processes": 1, "optimizer": "AdamW8bit",
    "optimizer_args": "", "output_dir": "", "output_name": "last", "persistent_data_loader_workers": False,
    "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5", "prior_loss_weight": 1, "random_crop": False,
    "rank_dropout": 0, "rank_dropout_scale": False, "reg_data_dir": "", "rescaled": False, "resume": "",
    "sample_every_n_epochs": 0, "sample_every_n_steps": 0, "sample_prompts": "", "sample_sampler": "euler_a",
    "save_every_n_epochs": 1, "save_every_n_steps": 0, "save_last_n_epochs": 0, "save_last_n_epochs_state": 0,
    "save_last_n_steps": 0, "save_last_n_steps_state": 0, "save_model_as": "safetensors", "save_precision": "fp16",
    "save_state": False, "save_state_on_train_end": False, "scale_v_pred_loss_like_noise_pred": False,
    "scale_weight_norms": 0, "sd3_checkbox": False, "sdxl": False, "sdxl_cache_text_encoder_outputs": False,
    "sdxl_no_half_vae": False, "seed": 0, "shuffle_caption": False, "skip_cache_check": False,
    "stop_text_encoder_training": 0, "t5xxl_lr": 0, "text_encoder_lr": 0.0001, "train_batch_size": 1,
    "train_data_dir": "", "train_norm": False, "train_on_input": True, "training_comment": "", "unet_lr": 0.0001,
    "unit": 1, "use_cp": False, "use_scalar": False, "use_tucker": False, "v2": False, "v_parameterization": False,
    "v_pred_like_loss": 0, "vae": "", "vae_batch_size": 0, "wandb_api_key": "", "wandb_run_name": "",
    "weighted_captions": False, "xformers": "xformers",
}
DEFAULT_FLAGS = {  # GUI_DEFAULTS as lora_gui.py writes them: "", 0 and False dropped
    "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5", "output_name": "last",
    "save_model_as": "safetensors", "save_precision": "fp16", "learning_rate": 1e-4, "lr_scheduler": "cosine",
    "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0, "train_batch_size": 1, "max_train_steps": 1600,
    "save_every_n_epochs": 1, "cache_latents": True, "caption_extension": ".txt", "enable_bucket": True,
    "min_bucket_reso": 256, "max_bucket_reso": 2048, "bucket_reso_steps": 64, "bucket_no_upscale": True,
    "max_grad_norm": 1.0, "mixed_precision": "fp16", "clip_skip": 1, "gradient_accumulation_steps": 1,
    "max_token_length": 75, "max_data_loader_n_workers": 0, "prior_loss_weight": 1.0, "loss_type": "l2",
    "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1.0, "max_timestep": 1000, "network_dim": 8,
    "network_alpha": 1.0, "sample_sampler": "euler_a", "dynamo_backend": "no", "resolution": "512,512",
    "network_module": "networks.lora", "text_encoder_lr": [1e-4, 1e-4], "unet_lr": 1e-4, "lr_warmup_steps": 0.1,
    "xformers": True, "wandb_run_name": "last", "optimizer_type": "AdamW8bit"}


def _preset(tmp_path, name="preset.json", **changes):
    path = tmp_path / name
    path.write_text(json.dumps({**GUI_DEFAULTS, **changes}, indent=2), encoding="utf-8")
    return str(path)


def test_gui_defaults_map_to_the_flags_the_gui_writes(tmp_path, caplog):
    path = _preset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sd_train.gui_preset"):
        assert load_config_file(path, "sd") == DEFAULT_FLAGS
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: kohya_ss GUI settings sd-train does not apply: dynamo_mode (accelerate launch setting); "
        "epoch (max_train_steps/max_train_epochs or the dataset config decide); model_list (GUI setting); "
        "num_cpu_threads_per_process (accelerate launch setting); num_machines (accelerate launch setting); "
        "num_processes (accelerate launch setting)"]


def test_sdxl_standard_unet_only_adafactor_epochs_and_additional_parameters(tmp_path, caplog):
    path = _preset(
        tmp_path, sdxl=True, sdxl_no_half_vae=True, sdxl_cache_text_encoder_outputs=True, max_resolution="1024,1024",
        optimizer="Adafactor", optimizer_args='scale_parameter=False "relative_step=False" warmup_init=False',
        lr_scheduler="constant_with_warmup", lr_warmup=0, lr_warmup_steps=100, text_encoder_lr=0, max_train_steps=0,
        epoch=10, noise_offset=0.0357, adaptive_noise_scale=0.00357, seed="1234", clip_skip="2", xformers="sdpa",
        additional_parameters="--max_grad_norm=0 --log_prefix xl", sample_prompts="sks dog --w 1024",
        output_name="", save_every_n_steps=50, network_dim=32, network_alpha=16.0, train_data_dir="img",
        output_dir="out", caption_dropout_every_n_epochs=0.0, gradient_accumulation_steps=2.0)
    expected = {k: v for k, v in DEFAULT_FLAGS.items() if k not in ("text_encoder_lr", "max_train_steps", "xformers",
                                                                      "wandb_run_name", "output_name", "max_grad_norm")}
    expected.update(
        resolution="1024,1024", optimizer_type="Adafactor", lr_scheduler="constant_with_warmup", lr_warmup_steps=100,
        optimizer_args=["scale_parameter=False", "relative_step=False", "warmup_init=False"], max_train_epochs=10,
        network_train_unet_only=True, noise_offset=0.0357, adaptive_noise_scale=0.00357, seed=1234, clip_skip=2,
        sdpa=True, no_half_vae=True, cache_text_encoder_outputs=True, save_every_n_steps=50, network_dim=32,
        network_alpha=16.0, train_data_dir="img", output_dir="out", gradient_accumulation_steps=2,
        max_grad_norm=0.0, log_prefix="xl")
    with caplog.at_level(logging.WARNING, logger="sd_train.gui_preset"):
        assert load_config_file(path, "sdxl") == expected
    assert "sample_prompts (prompt text: save it to a file and pass --sample_prompts FILE)" in caplog.text
    assert "epoch (" not in caplog.text


def test_sd15_lycoris_lokr_multires_prodigy_and_text_encoder_stop(tmp_path):
    path = _preset(tmp_path, LoRA_type="LyCORIS/LoKr", conv_dim=8, conv_alpha=4, factor=8, use_cp=True,
                   network_dim=100000, rank_dropout=0.1, noise_offset_type="Multires", multires_noise_iterations=8,
                   multires_noise_discount=0.2, noise_offset=0.05, optimizer="Prodigy",
                   optimizer_args='"d_coef=1.0" "weight_decay=0.01" "safeguard_warmup=True"', learning_rate=1,
                   text_encoder_lr=1, unet_lr=1, stop_text_encoder_training=25, min_snr_gamma=5, lr_warmup=0)
    expected = {k: v for k, v in DEFAULT_FLAGS.items() if k != "lr_warmup_steps"}
    expected.update(
        network_module="lycoris.kohya", network_dim=100000, multires_noise_iterations=8, multires_noise_discount=0.2,
        optimizer_type="Prodigy", optimizer_args=["d_coef=1.0", "weight_decay=0.01", "safeguard_warmup=True"],
        learning_rate=1.0, text_encoder_lr=[1.0, 1.0], unet_lr=1.0, train_text_encoder_frac=0.25, min_snr_gamma=5.0,
        network_args=["preset=full", "conv_dim=8", "conv_alpha=4", "use_tucker=False", "rank_dropout=0.1",
                      "bypass_mode=False", "dora_wd=False", "module_dropout=0", "factor=8", "use_cp=True",
                      "use_scalar=False", "decompose_both=False", "rank_dropout_scale=False", "algo=lokr",
                      "train_norm=False"])
    assert load_config_file(path, "sd") == expected


@pytest.mark.parametrize("kind, args", [
    ("LyCORIS/LoHa", ["preset=attn-mlp", "conv_dim=4", "conv_alpha=2", "use_tucker=False", "rank_dropout=0",
                      "bypass_mode=True", "dora_wd=False", "module_dropout=0", "use_scalar=False",
                      "rank_dropout_scale=False", "algo=loha", "train_norm=False"]),
    ("LyCORIS/iA3", ["preset=attn-mlp", "conv_dim=4", "conv_alpha=2", "train_on_input=True", "algo=ia3"]),
    ("LyCORIS/DyLoRA", ["preset=attn-mlp", "conv_dim=4", "conv_alpha=2", "use_tucker=False", "block_size=1",
                        "rank_dropout=0", "module_dropout=0", "algo=dylora", "train_norm=False"]),
    ("LyCORIS/Native Fine-Tuning", ["preset=attn-mlp", "rank_dropout=0", "module_dropout=0",
                                    "rank_dropout_scale=False", "algo=full", "train_norm=False"]),
    ("LyCORIS/Diag-OFT", ["preset=attn-mlp", "conv_dim=4", "conv_alpha=2", "module_dropout=0", "use_tucker=False",
                          "rank_dropout=0", "rank_dropout_scale=False", "constraint=0.0", "rescaled=False",
                          "algo=diag-oft", "train_norm=False"]),
    ("Kohya LoCon", ["conv_dim=4", "conv_alpha=2", "block_dims=2,4,4,8", "module_dropout=0.1",
                     "loraplus_lr_ratio=16", "loraplus_unet_lr_ratio=8"]),
])
def test_network_of_each_lora_type(tmp_path, kind, args):
    path = _preset(tmp_path, LoRA_type=kind, LyCORIS_preset="attn-mlp", conv_dim=4, conv_alpha=2, bypass_mode=True,
                   block_dims="2,4,4,8", module_dropout=0.1 if kind == "Kohya LoCon" else 0, loraplus_lr_ratio=16,
                   loraplus_unet_lr_ratio=8)
    flags = load_config_file(path, "sd")
    module = "networks.lora" if kind == "Kohya LoCon" else "lycoris.kohya"
    if kind != "Kohya LoCon":
        args = args + ["loraplus_lr_ratio=16", "loraplus_unet_lr_ratio=8"]
    assert (flags["network_module"], flags["network_args"]) == (module, args)


def test_older_preset_spellings(tmp_path):
    """String numbers, ``LoCon``, boolean ``xformers``, ``lora_network_weights``, ``use_wandb``, missing keys."""
    old = {k: v for k, v in GUI_DEFAULTS.items() if k not in (
        "bypass_mode", "dora_wd", "use_scalar", "rank_dropout_scale", "train_norm", "LyCORIS_preset",
        "network_weights")}
    old.update(LoRA_type="LoCon", xformers=True, lora_network_weights="base.safetensors", use_wandb="True",
               gradient_accumulation_steps=1.0, keep_tokens="2", max_train_epochs="16", lr_scheduler_num_cycles="",
               lr_scheduler_power="", seed="", learning_rate="0.0003", max_data_loader_n_workers="0", conv_dim=8)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    flags = load_config_file(str(path), "sd")
    assert flags["network_args"] == [
        "preset=full", "conv_dim=8", "conv_alpha=1", "use_tucker=False", "rank_dropout=0", "bypass_mode=False",
        "dora_wd=False", "module_dropout=0", "use_scalar=False", "rank_dropout_scale=False", "algo=locon",
        "train_norm=False"]
    assert (flags["xformers"], flags["network_weights"], flags["log_with"]) == (True, "base.safetensors", "wandb")
    assert (flags["keep_tokens"], flags["max_train_epochs"], flags["learning_rate"]) == (2, 16, 3e-4)
    assert "seed" not in flags and "lr_scheduler_num_cycles" not in flags and flags["max_data_loader_n_workers"] == 0


def test_epoch_is_the_run_length_only_without_steps_epochs_or_dataset_config(tmp_path):
    flags = load_config_file(_preset(tmp_path, max_train_steps="0", max_train_epochs="", epoch="12"), "sd")
    assert flags["max_train_epochs"] == 12 and "max_train_steps" not in flags
    flags = load_config_file(_preset(tmp_path, "d.json", max_train_steps=0, epoch=12, dataset_config="d.toml"), "sd")
    assert "max_train_epochs" not in flags and "max_train_steps" not in flags  # the GUI leaves sd-scripts' 1600
    with pytest.raises(UserError, match=r'w.json: lr_warmup_steps = "100%": invalid value'):
        load_config_file(_preset(tmp_path, "w.json", lr_warmup=100), "sd")


@pytest.mark.parametrize("changes, entry, message", [
    (dict(LoRA_type="Flux1", flux1_checkbox=True), "sdxl", "a kohya_ss FLUX.1 preset (flux1_checkbox); sd-train "
                                                           "trains SD 1.x/2.x and SDXL only"),
    (dict(LoRA_type="Flux1"), "sd", "LoRA_type 'Flux1' trains FLUX.1; sd-train trains SD 1.x/2.x and SDXL only"),
    (dict(sdxl=True), "sd", "this kohya_ss preset is for SDXL models; use sdxl_train_network.py"),
    (dict(), "sdxl", "this kohya_ss preset is for SD1.x models; use train_network.py"),
    (dict(v2=True), "sdxl", "this kohya_ss preset is for SD2.x models; use train_network.py"),
    (dict(LoRA_type="Kohya DyLoRA"), "sd", "LoRA_type 'Kohya DyLoRA' needs kohya's networks.dylora, which sd-train "
                                           "does not ship; use Standard, Kohya LoCon or a LyCORIS type"),
    (dict(LoRA_type="Mystery"), "sd", "unknown LoRA_type 'Mystery' (sd-train maps Standard, Kohya LoCon, "),
    (dict(learning_rate="fast"), "sd", "GUI key 'learning_rate': 'fast' is not a number"),
    (dict(learning_rate=0, text_encoder_lr=0, unet_lr=0), "sd", "learning_rate, text_encoder_lr and unet_lr are "
                                                                "all 0 (the GUI refuses this too)"),
    (dict(additional_parameters="--no_such_flag 3"), "sd", "additional_parameters '--no_such_flag 3': "
                                                           "train_network.py: unrecognized arguments"),
    (dict(network_dim=8.5), "sd", "GUI key 'network_dim': 8.5 is not a whole number"),
])
def test_presets_sd_train_cannot_run_are_one_line(tmp_path, changes, entry, message):
    path = _preset(tmp_path, **changes)
    with pytest.raises(UserError) as err:
        load_config_file(path, entry)
    assert str(err.value).startswith(f"{path}: {message}")


def test_output_config_prints_the_effective_flags_and_keeps_the_preset(tmp_path, capsys):
    path = _preset(tmp_path, sdxl=True, text_encoder_lr=0, output_dir="out", train_data_dir="img")
    before = (tmp_path / "preset.json").read_text()
    assert sdxl_main(["--config_file", path, "--output_config", "--network_dim", "4", "--config_skip", "seed,vae"]) == 0
    printed = toml.loads(capsys.readouterr().out)
    assert printed == {"pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5", "xformers": True,
                       "mixed_precision": "fp16", "train_data_dir": "img", "resolution": "512,512",
                       "caption_extension": ".txt", "cache_latents": True, "enable_bucket": True,
                       "max_bucket_reso": 2048, "bucket_no_upscale": True,
                       "max_data_loader_n_workers": 0, "max_timestep": 1000, "max_token_length": 75,
                       "clip_skip": 1, "lr_scheduler": "cosine", "lr_warmup_steps": 0.1, "optimizer_type": "AdamW8bit",
                       "learning_rate": 1e-4, "unet_lr": 1e-4, "network_module": "networks.lora", "network_dim": 4,
                       "network_train_unet_only": True, "output_dir": "out", "output_name": "last",
                       "save_precision": "fp16", "save_every_n_epochs": 1, "sample_sampler": "euler_a",
                       "wandb_run_name": "last", "dynamo_backend": "no"}
    assert (tmp_path / "preset.json").read_text() == before


def test_a_preset_trains_through_the_entry_point(assets, tmp_path):
    """A LyCORIS/LoCon SDXL preset with the tiny model: lycoris.kohya with the GUI's network_args trains."""
    ckpt, data = assets
    path = _preset(tmp_path, sdxl=True, LoRA_type="LyCORIS/LoCon", pretrained_model_name_or_path=str(ckpt),
                   dataset_config=str(data), output_dir=str(tmp_path / "out"), output_name="gui", network_dim=4,
                   network_alpha=2, conv_dim=2, conv_alpha=1, optimizer="AdamW", xformers="none", max_train_steps=2,
                   mixed_precision="no", save_precision="float", max_resolution="64,64", LyCORIS_preset="attn-mlp",
                   save_every_n_epochs=0, cache_latents=False)
    assert sdxl_main(["--config_file", path]) == 0
    meta = read_header(tmp_path / "out" / "gui.safetensors")[1]
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_steps"] == "2"
    assert json.loads(meta["ss_network_args"])["algo"] == "locon"
