"""Saving, resume, metadata and hub options (CLI.md §5.9)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt


@dataclass(frozen=True)
class SavingOptions:
    """Where and when models and states are written, and what metadata they carry."""

    output_dir: str | None = opt(None, "Output folder (created if missing)", common=True)
    output_name: str | None = opt(None, "Base name of saved files", common=True)
    save_precision: str | None = opt(
        None, "dtype of saved weights (default: the training dtype)", choices=("float", "fp16", "bf16"), common=True)
    save_model_as: str = opt(
        "safetensors", "File format; only safetensors carries metadata", choices=("ckpt", "pt", "safetensors"))
    save_every_n_epochs: int | None = opt(None, "Save at the end of every N-th epoch", type=int, common=True)
    save_every_n_steps: int | None = opt(None, "Save every N optimizer steps", type=int)
    save_n_epoch_ratio: int | None = opt(None, "Save N times over the run (sets --save_every_n_epochs)", type=int)
    save_last_n_epochs: int | None = opt(None, "Keep only the last N epoch files", type=int)
    save_last_n_epochs_state: int | None = opt(None, "Keep only the last N epoch state folders", type=int)
    save_last_n_steps: int | None = opt(None, "Remove step files older than N steps", type=int)
    save_last_n_steps_state: int | None = opt(None, "Remove step state folders older than N steps", type=int)
    save_state: bool = flag("Save resumable state with every model save and at the end")
    save_state_on_train_end: bool = flag("Save resumable state at the end only")
    resume: str | None = opt(None, "State folder to resume from")
    no_save_on_interrupt: bool = flag(
        "On Ctrl-C/SIGTERM exit without writing the -interrupted LoRA and state folder", ours=True)
    fallback_output_dir: str | None = opt(
        None, "Folder for a LoRA or state that cannot be written to --output_dir (a full disk, say)", ours=True)
    force: bool = flag("Start even when the disk pre-flight finds too little free space", ours=True)
    no_metadata: bool = flag("Write only the minimum metadata")
    training_comment: str | None = opt(None, "Free text stored in ss_training_comment")
    metadata_title: str | None = opt(None, "modelspec.title (default: --output_name)")
    metadata_author: str | None = opt(None, "modelspec.author")
    metadata_description: str | None = opt(None, "modelspec.description")
    metadata_license: str | None = opt(None, "modelspec.license")
    metadata_tags: str | None = opt(None, "modelspec.tags (comma-separated)")
    metadata_usage_hint: str | None = opt(None, "modelspec.usage_hint")
    metadata_thumbnail: str | None = opt(None, "modelspec.thumbnail: data URL or image file path")
    metadata_merged_from: str | None = opt(None, "modelspec.merged_from")
    metadata_trigger_phrase: str | None = opt(None, "modelspec.trigger_phrase")
    metadata_preprocessor: str | None = opt(None, "modelspec.preprocessor")
    metadata_is_negative_embedding: str | None = opt(None, "modelspec.is_negative_embedding")
    huggingface_repo_id: str | None = opt(None, "Hub repository for uploads (not supported)")
    huggingface_repo_type: str | None = opt(None, "Hub repository type (not supported)")
    huggingface_path_in_repo: str | None = opt(None, "Path inside the hub repository (not supported)")
    huggingface_token: str | None = opt(None, "Hub token (not supported; never written)")
    huggingface_repo_visibility: str | None = opt(None, "Hub repository visibility (not supported)")
    save_state_to_huggingface: bool = flag("Upload states to the hub (not supported)")
    resume_from_huggingface: bool = flag("Resume from a hub state (not supported)")
    async_upload: bool = flag("Upload to the hub asynchronously (not supported)")
