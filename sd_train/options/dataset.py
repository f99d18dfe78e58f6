"""Data, caption and caching options (CLI.md §5.2)."""

from __future__ import annotations

from dataclasses import dataclass

from library.dataset.captions import CaptionRule, add_caption_fields
from sd_train.options.base import flag, float_pair, opt, resolution_type

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area")


def caption_option(rule: CaptionRule):
    """The option of a caption rule (``library.dataset.captions.CAPTION_RULES``), with its one help text."""
    if rule.type is bool:
        return flag(rule.help, common=rule.common)
    return opt(rule.default, rule.help, type=rule.type, common=rule.common)


@dataclass(frozen=True)
@add_caption_fields(after="cache_info", make_field=caption_option)
class DatasetOptions:
    """Where the images come from and how captions and latents are prepared (the caption rules' options are
    generated from ``library.dataset.captions.CAPTION_RULES``)."""

    train_data_dir: str | None = opt(
        None, "Parent of the N_name image folders (with --in_json: the image folder)", common=True)
    reg_data_dir: str | None = opt(None, "Parent of the N_name folders with regularization images")
    generate_class_images: int | None = opt(
        None, "Before training, fill each regularization folder up to N images made by the base model", type=int,
        ours=True)
    in_json: str | None = opt(None, "Fine-tuning metadata file (.json / .jsonl)")
    dataset_repeats: int = opt(1, "Repeats of the --in_json subset", type=int)
    dataset_config: str | None = opt(
        None, "Dataset TOML/JSON; replaces --train_data_dir, --reg_data_dir and --in_json", common=True)
    dataset_class: str | None = opt(None, "Dataset class by dotted path (not supported)")
    resolution: str | None = opt(
        None, "Training resolution 'SIZE' or 'WIDTH,HEIGHT'", type=resolution_type, common=True)
    enable_bucket: bool = flag("Aspect-ratio bucketing", common=True)
    min_bucket_reso: int = opt(256, "Smallest bucket side in pixels", type=int)
    max_bucket_reso: int = opt(1024, "Largest bucket side in pixels", type=int, common=True)
    bucket_reso_steps: int = opt(
        64, "Bucket side granularity (SDXL: multiple of 32, SD1/2: multiple of 64)", type=int)
    bucket_no_upscale: bool = flag("One bucket per image size, never upscale", common=True)
    resize_interpolation: str | None = opt(
        None, "Resize filter (default: area when shrinking, lanczos when enlarging)", choices=INTERPOLATIONS)
    caption_extension: str = opt(".caption", "Caption file extension", common=True)
    caption_extention: str | None = opt(None, "Old misspelling of --caption_extension")  # kohya-compat
    cache_info: bool = flag("Cache captions and image sizes in metadata_cache.json per image folder")
    weighted_captions: bool = flag("A1111 attention weights such as (word:1.2) in captions")
    color_aug: bool = flag("Weak color augmentation (incompatible with latent caching)")
    flip_aug: bool = flag("Random horizontal flip with probability 0.5", common=True)
    face_crop_aug_range: str | None = opt(
        None, "'a,b': face-centred crop scale range (needs name_cx_cy_w_h file names)", type=float_pair)
    random_crop: bool = flag("Random instead of centred trim (incompatible with latent caching)")
    alpha_mask: bool = flag("Use the image alpha channel as a loss mask")
    conditioning_data_dir: str | None = opt(None, "Mask images for --masked_loss (same stem as the images)")
    masked_loss: bool = flag("Multiply the loss by masks from --conditioning_data_dir")
    debug_dataset: bool = flag("Print the dataset report and exit")
    cache_latents: bool = flag("Encode all images with the VAE once and keep the latents in RAM", common=True)
    cache_latents_to_disk: bool = flag("Also write latents to .npz files (implies --cache_latents)")
    vae_batch_size: int = opt(1, "Batch size for latent caching", type=int)
    skip_cache_check: bool = flag("Trust existing cache files without checking their contents")
    cache_text_encoder_outputs: bool = opt(
        False, "Encode captions once (needs --network_train_unet_only, no caption randomness)",
        flag=True, common=True, sdxl_only=True)
    cache_text_encoder_outputs_to_disk: bool = opt(
        False, "Also write *_te_outputs.npz files (implies --cache_text_encoder_outputs)",
        flag=True, sdxl_only=True)
    max_data_loader_n_workers: int = opt(8, "DataLoader worker processes (capped at the CPU count)", type=int)
    persistent_data_loader_workers: bool = flag("Keep DataLoader workers alive between epochs")
