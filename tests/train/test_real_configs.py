"""Configurations kohya users published, run through the real entry points (issue #18).

Each test keeps its source's keys and values; only paths, sizes, step counts and hardware-only settings
(xformers, fp16 on a CPU, 8-bit optimizers) are adapted, as noted per test.
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


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    from tools.make_tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint("sd15", tmp_path_factory.mktemp("sd15") / "sd15.safetensors")


@pytest.fixture
def images(tmp_path) -> Path:
    """The sample dataset's ``10_sks shape`` folder (8 images of 64–128 px with .txt captions)."""
    from tools.make_sample_dataset import make_sample_dataset

    return make_sample_dataset(tmp_path / "data").parent / "10_sks shape"


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_cyber_meow_sectioned_lycoris_config(sd15, images, tmp_path, caplog):
    """cyber-meow/sd_training_config kohya_network_config.toml: sectioned, ``resume = false``,
    ``training_comment = ""``, ``lr_scheduler_type = ""``, ``resume_from_huggingface = false``, a scalar
    ``text_encoder_lr``, ``network_dropout = 0``, LoHa through lycoris.kohya. Adapted: paths, resolution 64 and
    buckets 64–128, 2 steps instead of 2 epochs, batch 1, mixed_precision bf16 -> no and xformers -> false
    (CPU), AdamW8bit -> AdamW, 0 loader workers, no latent cache files, and ``preset=attn-mlp`` added to
    network_args (lycoris-lora 4.1.3's default preset names two modules of diffusers' SD1 UNet alike)."""
    out = tmp_path / "out"
    cfg = _write(tmp_path / "kohya_network_config.toml", f"""[Basics]
pretrained_model_name_or_path = "{sd15.as_posix()}"
train_data_dir = "{images.parent.as_posix()}"
resolution = "64"
seed = 23
max_train_steps = 2
clip_skip = 2

[Save]
output_dir = "{out.as_posix()}"
output_name = "name"
save_precision = "fp16"
save_model_as = "safetensors"
save_every_n_epochs = 10
save_every_n_steps = 5000
save_state = false
save_last_n_steps_state = 1

[SDv2]
v2 = false
v_parameterization = false
scale_v_pred_loss_like_noise_pred = false

[Network_setup]
network_dim = 8
network_alpha = 4.0
dim_from_weights = false
network_dropout = 0
network_train_unet_only = false
network_train_text_encoder_only = false
resume = false

[LyCORIS]
network_module = "lycoris.kohya"
network_args = [ "conv_dim=4", "conv_alpha=1", "algo=loha", "preset=attn-mlp",]

[Optimizer]
train_batch_size = 1
gradient_checkpointing = false
gradient_accumulation_steps = 1
optimizer_type = "AdamW"
unet_lr = 0.0002
text_encoder_lr = 0.0002
max_grad_norm = 1.0
optimizer_args = [ "weight_decay=0.1", "betas=0.9,0.99",]

[Lr_scheduler]
lr_scheduler_type = ""
lr_scheduler = "constant"
lr_warmup_steps = 0
lr_scheduler_num_cycles = 1
lr_scheduler_power = 1.0

[Training_preciscion]
mixed_precision = "no"
full_fp16 = false

[Further_improvement]
min_snr_gamma = 5
multires_noise_discount = 0.3
multires_noise_iterations = 10
scale_weight_norms = 1

[ARB]
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128
bucket_reso_steps = 64
bucket_no_upscale = false

[Captions]
shuffle_caption = false
caption_extension = ".txt"
keep_tokens = 0
caption_dropout_rate = 0.05
caption_dropout_every_n_epochs = 0
caption_tag_dropout_rate = 0.0
max_token_length = 150
weighted_captions = false
token_warmup_min = 1
token_warmup_step = 0

[Attention]
mem_eff_attn = false
xformers = false

[Data_augmentation]
color_aug = false
flip_aug = false
random_crop = false

[Cache_latents]
cache_latents = true
vae_batch_size = 1
cache_latents_to_disk = false

[Sampling_during_training]
sample_sampler = "ddim"

[Logging]
logging_dir = "{(tmp_path / 'logs_training').as_posix()}"
log_with = "tensorboard"
log_prefix = "lycoris_"

[Dataset]
max_data_loader_n_workers = 0
persistent_data_loader_workers = true
dataset_repeats = 1

[Regularization]
prior_loss_weight = 1.0

[Huggingface]
save_state_to_huggingface = false
resume_from_huggingface = false
async_upload = false

[Debugging]
debug_dataset = false

[Deprecated]
use_8bit_adam = false
use_lion_optimizer = false
learning_rate = 0.0002

[Others]
lowram = false
training_comment = ""
""")
    with caplog.at_level(logging.WARNING):
        assert sd_main(["--config_file", cfg]) == 0
    _, meta = read_header(out / "name.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya" and '"algo": "loha"' in meta["ss_network_args"]
    assert (meta["ss_training_comment"], meta["ss_max_token_length"], meta["ss_text_encoder_lr"]) == ("", "150",
                                                                                                      "0.0002")
    assert (meta["ss_network_dropout"], meta["ss_clip_skip"], meta["ss_seed"]) == ("0.0", "2", "23")
    assert list((tmp_path / "logs_training").iterdir())[0].name.startswith("lycoris_")


GUI_DATASET_MASKED_LOSS = """[[datasets]]
resolution = 64
batch_size = 4
keep_tokens = 1
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 1024
bucket_reso_steps = 32
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = '{images}'
  num_repeats = 10
  caption_extension = '.txt'
  conditioning_data_dir = '{masks}'"""


def _masks_for(images: Path, folder: Path) -> Path:
    folder.mkdir()
    for png in images.glob("*.png"):
        with Image.open(png) as img:
            Image.new("L", img.size, 255).save(folder / png.name)
    return folder


def test_kohya_ss_gui_written_toml_with_masked_loss_dataset(sd15, images, tmp_path, caplog, capsys):
    """What the kohya_ss GUI's TOML writer (kohya_gui/lora_gui.py: empty/false/0 values dropped, keys sorted,
    ``persistent_data_loader_workers = int(checkbox)``, ``epoch``, ``noise_offset_type``) writes for its own test
    preset test/config/locon-AdamW8bit-masked_loss-toml.json, with that preset's dataset
    test/config/dataset-masked_loss.toml (SD1.5, masked loss, ``bucket_reso_steps = 32``). Adapted: paths, model,
    resolution 64, 2 steps, batch 2, AdamW8bit -> AdamW, bf16 -> no, xformers -> sdpa."""
    out = tmp_path / "out"
    dataset = _write(tmp_path / "dataset-masked_loss.toml", GUI_DATASET_MASKED_LOSS.format(
        images=images.as_posix(), masks=_masks_for(images, tmp_path / "masked_loss").as_posix()))
    prompts = _write(tmp_path / "prompt.txt", "a painting of a gas mask , by darius kawasaki\n")
    cfg = _write(tmp_path / "config_lora-20240420-120000.toml", f"""bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
caption_dropout_rate = 0.05
clip_skip = 2
dataset_config = "{dataset}"
dynamo_backend = "no"
enable_bucket = true
epoch = 1
gradient_accumulation_steps = 1
huber_c = 0.1
huber_scale = 1
huber_schedule = "snr"
learning_rate = 0.0005
logging_dir = "{(tmp_path / 'logs').as_posix()}"
loss_type = "l2"
lr_scheduler = "constant"
lr_scheduler_args = []
lr_scheduler_num_cycles = 1
masked_loss = true
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1
max_timestep = 1000
max_token_length = 75
max_train_steps = 2
min_bucket_reso = 256
mixed_precision = "no"
network_alpha = 1
network_args = []
network_dim = 8
network_module = "networks.lora"
noise_offset = 0.05
noise_offset_type = "Original"
optimizer_args = []
optimizer_type = "AdamW"
output_dir = "{out.as_posix()}"
output_name = "locon-AdamW8bit-masked_loss-toml"
persistent_data_loader_workers = 1
pretrained_model_name_or_path = "{sd15.as_posix()}"
prior_loss_weight = 1.0
resolution = "64,64"
sample_every_n_steps = 25
sample_prompts = "{prompts}"
sample_sampler = "euler_a"
save_every_n_epochs = 1
save_model_as = "safetensors"
save_precision = "fp16"
sdpa = true
seed = 1234
train_batch_size = 2
unet_lr = 0.0001
wandb_run_name = "locon-AdamW8bit-masked_loss-toml"
""")
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
    """hollowstrawberry/kohya-colab Lora_Trainer_XL.ipynb ``create_config()`` (sections network_arguments,
    optimizer_arguments, training_arguments, saving_arguments; None values dropped) and its dataset config
    ([general] with the resolution, caption_extension; one subset with num_repeats and image_dir). Adapted:
    paths, resolution 64 and buckets 64–128 in 64-pixel steps, 2 steps, AdamW8bit -> AdamW, fp16 -> no,
    max_data_loader_n_workers 0, no cache files on the drive."""
    out = tmp_path / "output"
    dataset = _write(tmp_path / "dataset_config.toml", f"""[[datasets]]
[[datasets.subsets]]
num_repeats = 2
image_dir = "{images.as_posix()}"

[general]
resolution = 64
shuffle_caption = true
keep_tokens = 1
flip_aug = false
caption_extension = ".txt"
enable_bucket = true
bucket_no_upscale = false
bucket_reso_steps = 64
min_bucket_reso = 64
max_bucket_reso = 128
""")
    cfg = _write(tmp_path / "training_config.toml", f"""[network_arguments]
unet_lr = 0.0003
text_encoder_lr = 0.0
network_dim = 8
network_alpha = 4
network_module = "networks.lora"
network_train_unet_only = true

[optimizer_arguments]
learning_rate = 0.0003
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0
optimizer_type = "AdamW"
optimizer_args = [ "weight_decay=0.1", "betas=[0.9,0.99]",]
loss_type = "l2"
max_grad_norm = 1.0

[training_arguments]
lowram = false
pretrained_model_name_or_path = "{tiny_sdxl.as_posix()}"
max_train_steps = 2
train_batch_size = 2
seed = 42
max_token_length = 225
xformers = false
sdpa = true
min_snr_gamma = 8.0
no_half_vae = true
gradient_checkpointing = true
gradient_accumulation_steps = 1
max_data_loader_n_workers = 0
persistent_data_loader_workers = true
mixed_precision = "no"
full_fp16 = false
full_bf16 = false
cache_latents = true
cache_latents_to_disk = false
cache_text_encoder_outputs = false
min_timestep = 0
max_timestep = 1000
prior_loss_weight = 1.0

[saving_arguments]
save_precision = "fp16"
save_model_as = "safetensors"
save_every_n_epochs = 1
save_last_n_epochs = 10
output_name = "example"
output_dir = "{out.as_posix()}"
log_prefix = "example"
logging_dir = "{(tmp_path / 'log').as_posix()}"
""")
    assert sdxl_main(["--config_file", cfg, "--dataset_config", dataset]) == 0
    tensors, meta = read_header(out / "example.safetensors")
    assert (meta["ss_max_token_length"], meta["ss_lr_scheduler"], meta["ss_min_snr_gamma"]) == (
        "225", "cosine_with_restarts", "8.0")
    assert all(k.startswith("lora_unet_") for k in tensors)


def test_kohya_docs_command_line_with_scheduler_class_and_odd_token_length(sd15, images, tmp_path, caplog):
    """kohya's docs/train_network.md command line over the DreamBooth part of docs/config_README-en.md's dataset
    example (with enable_bucket), plus a TOML with ``lr_scheduler_type = "CosineAnnealingLR"``
    and its ``lr_scheduler_args`` (a class name resolved in torch.optim.lr_scheduler) and
    ``max_token_length = 128`` (outside argparse's choices; kohya's tokenizer uses one 75-token chunk).
    Adapted: paths, model, resolution 64 with buckets 64–128, 2 steps, AdamW8bit -> AdamW, fp16 -> no."""
    out = tmp_path / "out"
    dataset = _write(tmp_path / "my_dataset_config.toml", f"""[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128

[[datasets]]
resolution = 64
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = '{images.as_posix()}'
  class_tokens = 'hoge girl'

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{images.as_posix()}'
  class_tokens = 'human'
  keep_tokens = 1
""")
    extra = _write(tmp_path / "extra.toml", '[optimizer_arguments]\nlr_scheduler_type = "CosineAnnealingLR"\n'
                   'lr_scheduler_args = ["T_max=100"]\n\n[training_arguments]\nmax_token_length = 128\n')
    argv = [f"--pretrained_model_name_or_path={sd15}", f"--dataset_config={dataset}", f"--output_dir={out}",
            "--output_name=my_lora", "--save_model_as=safetensors", "--network_module=networks.lora",
            "--network_dim=16", "--network_alpha=1", "--learning_rate=1e-4", '--optimizer_type=AdamW',
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
