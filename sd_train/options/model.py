"""Model, precision and attention options (CLI.md §5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt

DYNAMO_BACKENDS = (
    "no",  # kohya-compat: accelerate's "no compile"; the kohya_ss GUI writes dynamo_backend = "no"
    "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs",
    "ofi", "fx2trt", "onnxrt", "tensort", "ipex", "tvm",
)


@dataclass(frozen=True)
class ModelOptions:
    """Which base model to load and in which precision; field names are kohya's flags."""

    v2: bool = flag("Base model is SD 2.x (OpenCLIP ViT-H text encoder); an error with sdxl_train_network.py")
    v_parameterization: bool = flag("Train against the v-prediction target (SD2 768-v, v-pred SDXL fine-tunes)")
    pretrained_model_name_or_path: str | None = opt(
        None, "Base model: single-file .safetensors/.ckpt, diffusers folder or hub id", common=True)
    tokenizer_cache_dir: str | None = opt(
        None, "Folder with tokenizer files (optional: sd-train builds its tokenizers offline)")
    max_token_length: int | None = opt(
        None, "Caption token budget: 75 (default), 150 or 225", type=int,
        choices=(75, 150, 225))  # kohya-compat: 75 (as the kohya_ss GUI writes) equals the default
    mem_eff_attn: bool = flag("Memory-efficient attention (sd-train uses PyTorch SDPA for it)")
    torch_compile: bool = flag("Compile the UNet with torch.compile")
    dynamo_backend: str = opt("inductor", "Backend for torch.compile", choices=DYNAMO_BACKENDS)
    xformers: bool = flag("Use xformers attention (error if it is not installed)", common=True)
    sdpa: bool = flag("Use torch.nn.functional.scaled_dot_product_attention", common=True)
    vae: str | None = opt(
        None, "Replacement VAE: single file, diffusers folder, .bin state dict or hub id", common=True)
    gradient_checkpointing: bool = flag(
        "Recompute activations in the backward pass (UNet and trained text encoders)", common=True)
    mixed_precision: str = opt(
        "no", "Autocast precision and dtype of the frozen base model", choices=("no", "fp16", "bf16"),
        common=True)
    full_fp16: bool = flag("Network parameters and gradients in fp16 too (needs --mixed_precision fp16)")
    full_bf16: bool = flag("Network parameters and gradients in bf16 too (needs --mixed_precision bf16)")
    fp8_base: bool = flag("Store the frozen base weights in float8_e4m3fn; compute upcasts")
    fp8_base_unet: bool = flag("fp8 for the UNet only; text encoders stay fp16/bf16")
    clip_skip: int | None = opt(
        None, "SD1/2: use the hidden state of the n-th text-encoder layer from the end (1 = last)", type=int)
    lowram: bool = flag("Load models straight to the GPU instead of staging them in RAM")
    highvram: bool = flag("Do not free the GPU cache between caching batches")
    cpu_offload_checkpointing: bool = flag("kohya: DiT models only; ignored for SD/SDXL with a warning")
    no_half_vae: bool = flag("Keep the VAE in fp32 under mixed precision (avoids NaN latents with SDXL)", common=True)
    disable_mmap_load_safetensors: bool = opt(
        False, "Read the checkpoint tensor by tensor even when no cast is needed (a cast always does)",
        flag=True, sdxl_only=True)
