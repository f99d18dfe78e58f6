"""The training objective of one batch (TRAINING.md §5–6): latents, text conditioning, noise, prediction,
target and loss. Kept apart from the loop in :mod:`sd_train.trainer` so each stays small."""

from __future__ import annotations

import random

import torch

from library.errors import UserError
from sd_train import loss as loss_lib
from sd_train import noise as noise_lib
from sd_train import preservation
from sd_train.options.model import DYNAMO_BACKENDS


def check_compile_backend(backend: str) -> None:
    """Refuse a ``--dynamo_backend`` this PyTorch has not registered (``ipex`` without IPEX, say), before
    any model loads."""
    import torch._dynamo

    registered = torch._dynamo.list_backends(exclude_tags=())
    if backend not in registered:
        usable = ", ".join(b for b in DYNAMO_BACKENDS if b in registered)
        raise UserError(f"--dynamo_backend {backend} is not available with this PyTorch install; use one of: {usable}")


def compile_unet(unet: torch.nn.Module, backend: str):
    """``--torch_compile``: the UNet's training forward through ``torch.compile`` with ``backend`` (kohya
    compiles through accelerate). Call it after the network is applied so its forward swaps are traced;
    sampling and the DOP prior pass keep the plain module. The backend was checked at setup
    (:func:`check_compile_backend`)."""
    return torch.compile(unet, backend=backend)


def batch_latents(trainer, batch: dict, gen: torch.Generator) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) float32 on the training device: cached, or encoded now."""
    device = trainer.accelerator.device
    latents = batch.get("latents")
    if latents is None:
        latents = trainer.family.latent_encoder(trainer.models.vae, device, gen)(batch["images"])
    return latents.to(device, torch.float32) * trainer.family.latent_scale


def batch_conds(trainer, batch: dict):
    """Text conditioning of the batch: cached TE outputs, or the captions encoded now (with gradients only
    when the text encoders train)."""
    if batch.get("text_encoder_outputs") is not None:
        return trainer.family.cached_conds(batch["text_encoder_outputs"])
    reused = trainer.te_stop.conds(trainer, batch["captions"])  # the text encoder stopped training
    if reused is not None:
        return reused
    with torch.set_grad_enabled(trainer.train_te and torch.is_grad_enabled()):
        return trainer.family.encode_captions(trainer.models.text_encoders, batch["captions"])


def batch_loss(trainer, batch: dict, gen: torch.Generator, rng: random.Random,
               timestep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of one batch with noise from ``gen`` / ``rng``; ``timestep`` fixes every sample's timestep
    (validation). Returns ``(loss (), timesteps (B,))``."""
    latents = batch_latents(trainer, batch, gen)
    with trainer.accelerator.autocast():  # kohya-compat: fp16/bf16 TEs (CUDA) run their fp32 LoRA under autocast
        conds = batch_conds(trainer, batch)
    conds = conds.to(trainer.accelerator.device, trainer.weight_dtype)
    fixed = None if timestep is None else torch.full((latents.shape[0],), timestep, dtype=torch.long)
    schedule = trainer.schedule
    eps, x_t, t = noise_lib.noisy_latents(schedule, latents, trainer.noise_opts, gen, rng, timesteps=fixed)
    with trainer.accelerator.autocast():
        pred = trainer.family.predict(trainer.unet_fn, x_t.to(trainer.weight_dtype), t, conds, batch)
    target = noise_lib.v_target(schedule, latents, eps, t) if trainer.loss_opts.v_parameterization else eps
    target = preservation.preserve_outputs(trainer, batch, x_t, t, conds, target)  # DOP rows: prior prediction
    cond = batch.get("conditioning_images")
    mask = batch.get("alpha_masks") if cond is None else loss_lib.conditioning_mask(cond)
    loss = loss_lib.per_sample_loss(pred, target, t, schedule.alphas_cumprod, schedule.snr, trainer.loss_opts,
                                    mask=mask, loss_weights=batch.get("loss_weights")).mean()
    return loss, t
