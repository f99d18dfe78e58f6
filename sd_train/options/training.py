"""Steps, batches, validation, distribution, config files, noise and loss (CLI.md §5.3, §5.4, §5.7)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt


@dataclass(frozen=True)
class TrainingOptions:
    """How long and how the network is trained; field names are kohya's flags."""

    train_batch_size: int = opt(1, "Images per batch per process", type=int, common=True)
    max_train_steps: int = opt(1600, "Optimizer steps to train", type=int, common=True)
    max_train_epochs: int | None = opt(None, "Epochs to train; overrides --max_train_steps", type=int, common=True)
    seed: int | None = opt(None, "Global seed; a random one is drawn and recorded when unset", type=int, common=True)
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step", type=int)
    prior_loss_weight: float = opt(1.0, "Loss weight of regularization images", type=float)
    initial_epoch: int | None = opt(None, "Start counting at this epoch (1 = first)", type=int)
    initial_step: int | None = opt(
        None, "Start counting at this global step (0 = first); wins over --initial_epoch", type=int)
    skip_until_initial_step: bool = flag("Draw and discard data until the initial step")
    validation_split: float = opt(0.0, "Fraction of each dataset held out for validation", type=float)
    validation_seed: int | None = opt(None, "Seed of the split and of validation noise (default --seed)", type=int)
    validate_every_n_steps: int | None = opt(None, "Validate every N optimizer steps", type=int)
    validate_every_n_epochs: int | None = opt(None, "Validate every N epochs", type=int)
    max_validation_steps: int | None = opt(None, "Cap on validation batches per validation run", type=int)
    ddp_timeout: int | None = opt(None, "DDP timeout in minutes", type=int)
    ddp_gradient_as_bucket_view: bool = flag("DDP option gradient_as_bucket_view")
    ddp_static_graph: bool = flag("DDP option static_graph")
    deepspeed: bool = flag("DeepSpeed (not supported)")
    zero_stage: int = opt(2, "DeepSpeed ZeRO stage (not supported)", type=int, choices=(0, 1, 2, 3))
    offload_optimizer_device: str | None = opt(
        None, "DeepSpeed optimizer offload device (not supported)", choices=("cpu", "nvme"))
    offload_optimizer_nvme_path: str | None = opt(None, "DeepSpeed optimizer offload path (not supported)")
    offload_param_device: str | None = opt(
        None, "DeepSpeed parameter offload device (not supported)", choices=("cpu", "nvme"))
    offload_param_nvme_path: str | None = opt(None, "DeepSpeed parameter offload path (not supported)")
    zero3_init_flag: bool = flag("DeepSpeed ZeRO-3 init (not supported)")
    zero3_save_16bit_model: bool = flag("DeepSpeed ZeRO-3 16-bit save (not supported)")
    fp16_master_weights_and_gradients: bool = flag("DeepSpeed fp16 master weights (not supported)")
    config_file: str | None = opt(None, "Training TOML or JSON (or kohya_ss GUI preset) whose keys are these "
                                  "options ('.toml' is appended without a .toml/.json suffix)")
    output_config: bool = flag("Write the non-default options to --config_file (.json: JSON) and exit")
    config_skip: str | None = opt(None, "Comma-separated keys of --config_file to ignore", ours=True)
    dry_run: bool = flag("Print the dataset report and the run plan, run the checks that need no model, then exit 0 "
                         "without loading any model", ours=True)
    noise_offset: float | None = opt(None, "Noise offset strength (about 0.1)", type=float, common=True)
    noise_offset_random_strength: bool = flag("Scale the noise offset by U(0,1) each step")
    adaptive_noise_scale: float | None = opt(
        None, "Add scale × |mean latent| to the noise offset (needs --noise_offset)", type=float)
    multires_noise_iterations: int | None = opt(None, "Pyramid noise levels (6-10 typical)", type=int)
    multires_noise_discount: float = opt(0.3, "Per-level discount of pyramid noise", type=float)
    ip_noise_gamma: float | None = opt(None, "Input-perturbation noise strength (about 0.1)", type=float)
    ip_noise_gamma_random_strength: bool = flag("Scale the input perturbation by U(0,1)")
    zero_terminal_snr: bool = flag("Rescale betas to zero terminal SNR")
    min_timestep: int | None = opt(None, "Smallest training timestep (default 0)", type=int)
    max_timestep: int | None = opt(None, "Timestep upper bound, exclusive (default 1000)", type=int)
    loss_type: str = opt("l2", "Loss function", choices=("l1", "l2", "huber", "smooth_l1"))
    huber_schedule: str = opt("snr", "Schedule of the Huber parameter", choices=("constant", "exponential", "snr"))
    huber_c: float = opt(0.1, "Huber parameter", type=float)
    huber_scale: float = opt(1.0, "Huber scale", type=float)
    min_snr_gamma: float | None = opt(None, "Min-SNR weighting gamma (5 typical)", type=float, common=True)
    scale_v_pred_loss_like_noise_pred: bool = flag(
        "Scale the v-loss like the epsilon loss (needs --v_parameterization)")
    v_pred_like_loss: float | None = opt(None, "Add a v-prediction-like loss term with this weight", type=float)
    debiased_estimation_loss: bool = flag("Debiased-estimation loss weighting")
    max_nan_steps: int = opt(10, "Stop after N consecutive optimizer steps skipped for a non-finite loss or "
                             "gradient", type=int, ours=True)
    stop_text_encoder_training: int | None = opt(
        None, "Freeze the text-encoder network after N optimizer steps (kohya DreamBooth's flag)", type=int,
        ours=True)
    train_text_encoder_frac: float | None = opt(
        None, "Freeze the text-encoder network after this fraction of the steps (0 < F <= 1)", type=float,
        ours=True)
