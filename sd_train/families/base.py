"""The model-family strategy object: the only model-specific code on the training path.

A family loads the models, tokenizes and encodes captions, and runs the UNet. It replaces
kohya's ~40 overridable ``NetworkTrainer`` hooks with one narrow object (ARCHITECTURE.md §3.3).
Shared here: long-caption chunking (TRAINING.md §3.1) and re-joining of chunk states (§3.2).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from library.errors import UserError, first_line
from library.io.safetensors_io import file_model_hashes
from library.models.families import FamilySpec
from library.text.conditioning import CHUNK, chunk_token_ids, load_tokenizer
from library.text.prompt_weights import apply_token_weights, tokenize_chunks_weighted


@dataclass
class Conds:
    """Text conditioning of one batch.

    Attributes:
        context: (B, L, D) hidden states fed to cross-attention (L = 77, 152 or 227).
        pooled: (B, P) pooled TE2 output (SDXL only), else ``None``.
    """

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device, dtype=None) -> "Conds":
        """Move (and optionally cast) both tensors."""
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return Conds(self.context.to(device, dtype), pooled)


class ModelFamily(abc.ABC):
    """Strategy object for the families one trainer script trains (SD1/SD2, or SDXL).

    Class attributes (facts of the script, known before any option is parsed): ``entry`` (the name
    ``sd_train.entry`` uses), ``specs`` (the :class:`library.models.families.FamilySpec` it trains; ``--v2``
    picks among them), ``default_sampler``, ``uses_clip_skip``, ``takes_sdxl_only_flags`` (the options
    kohya defines only in ``sdxl_train_network.py``), ``embeddings_only`` (a textual-inversion script:
    no network, only new token embeddings train), ``excluded_option_groups`` (option groups its command
    line leaves out) and ``option_defaults`` (its own defaults). Per instance, :attr:`spec` is the
    family being trained and the properties below read it.

    Args:
        v2: SD2 model (``--v2``). v_parameterization: v-prediction (``--v_parameterization``).
        max_token_length: ``--max_token_length`` (None, 150 or 225).
        clip_skip: ``--clip_skip`` (SD only). tokenizer_cache_dir: ``--tokenizer_cache_dir``.
        weighted_captions: ``--weighted_captions`` (A1111 attention weights, TRAINING.md §3.1).
    """

    entry: str = ""
    specs: tuple[FamilySpec, ...] = ()
    default_sampler: str = "ddim"
    uses_clip_skip: bool = True
    takes_sdxl_only_flags: bool = False
    embeddings_only: bool = False
    excluded_option_groups: tuple[str, ...] = ("textual_inversion",)
    option_defaults: dict = {}
    script_attr: str = "trainer_script"  # the FamilySpec field naming this entry's script

    def __init__(self, v2: bool = False, v_parameterization: bool = False,
                 max_token_length: int | None = None, clip_skip: int | None = None,
                 tokenizer_cache_dir: str | None = None, weighted_captions: bool = False):
        self.v2 = v2
        self.v_parameterization = v_parameterization
        self.max_token_length = max_token_length
        self.clip_skip = clip_skip
        self.tokenizer_cache_dir = tokenizer_cache_dir
        self.weighted_captions = weighted_captions
        self._tokenizers: list | None = None

    @classmethod
    def script(cls) -> str:
        """The kohya script name of this entry (``train_network.py`` …)."""
        return getattr(cls.specs[0], cls.script_attr)

    @classmethod
    def spec_for(cls, v2: bool) -> FamilySpec:
        """The family trained with (or without) ``--v2``: the one whose ``v2`` matches, else the first."""
        return next((s for s in cls.specs if s.v2 == v2), cls.specs[0])

    @property
    def spec(self) -> FamilySpec:
        """The :class:`FamilySpec` of the family being trained."""
        return self.spec_for(self.v2)

    @property
    def name(self) -> str:
        """Family name (``sd1``, ``sd2`` or ``sdxl``), as stored with the loaded models."""
        return self.spec.name

    @property
    def latent_scale(self) -> float:
        """VAE latent scale factor (0.18215 SD1/SD2, 0.13025 SDXL)."""
        return self.spec.vae_scale

    @property
    def bucket_step_multiple(self) -> int:
        """Bucket sizes are multiples of this (64 SD1/SD2, 32 SDXL)."""
        return self.spec.bucket_step_multiple

    @property
    def max_length(self) -> int:
        """Padded caption length before chunking: 77, or ``max_token_length + 2``."""
        return CHUNK if self.max_token_length is None else self.max_token_length + 2

    def load(self, path: str, *, vae_path: str | None = None, dtype=torch.float32,
             device="cpu", mmap: bool = True, unet_dtype: torch.dtype | None = None):
        """Load UNet, TEs and VAE with :func:`library.checkpoint.io.load_models` (strict, detected); hub ids
        are fetched first (:mod:`library.checkpoint.hub`)."""
        from library.checkpoint import hub
        from library.checkpoint.io import load_models

        path = hub.local_path(path, hub.MODEL_FILES)
        vae_path = vae_path and hub.local_path(vae_path, hub.VAE_FILES)
        return load_models(path, expected_family=self.name, v2=self.v2, dtype=dtype, device=device,
                           vae_path=vae_path, mmap=mmap, unet_dtype=unet_dtype, script_attr=self.script_attr)

    def tokenizers(self) -> list:
        """The tokenizers, one per text encoder (built once, offline)."""
        if self._tokenizers is None:
            self._tokenizers = self._build_tokenizers()
        return self._tokenizers

    def tokenize(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """Tokenize captions for every text encoder: a list of (B, n, 77) LongTensors."""
        out = []
        for tok in self.tokenizers():
            ids = tok.tokenize(list(captions), max_length=self.max_length)
            out.append(chunk_token_ids(ids, tok.eos_token_id, tok.pad_token_id))
        return out

    def tokenize_with_weights(self, captions: Sequence[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A1111-weighted tokenization: per text encoder, ids (B, n, 77) and float32 weights (B, n, 77)."""
        pairs = [tokenize_chunks_weighted(tok, list(captions), self.max_length) for tok in self.tokenizers()]
        return [ids for ids, _ in pairs], [w for _, w in pairs]

    def encode_captions(self, text_encoders: Sequence[torch.nn.Module], captions: Sequence[str]) -> Conds:
        """Captions -> :class:`Conds`, with the token weights applied under ``--weighted_captions``."""
        if not self.weighted_captions:
            return self.encode(text_encoders, self.tokenize(captions))
        return self.encode_weighted(text_encoders, *self.tokenize_with_weights(captions))

    def encode_weighted(self, text_encoders: Sequence[torch.nn.Module], tokens: list[torch.Tensor],
                        weights: list[torch.Tensor]) -> Conds:
        """Encode, then multiply the context (B, L, D) by the re-joined token weights (one text encoder)."""
        conds = self.encode(text_encoders, tokens)
        return Conds(apply_token_weights(conds.context, weights[0]), conds.pooled)

    def model_info(self, path: str, vae_path: str | None = None) -> dict:
        """``model_info`` for :mod:`sd_train.metadata`: family, v-param, model (and ``--vae``) names and, for
        local files, their A1111 hashes. A path that does not exist (a hub id) is kept as given (FORMAT.md §5)."""
        info = {"family": self.name, "v_parameterization": self.v_parameterization}
        for prefix, p in (("sd_model", path), ("vae", vae_path)):
            if p is None:
                continue
            info[f"{prefix}_name"] = os.path.basename(p) if os.path.exists(p) else p
            if os.path.isfile(p):
                info[f"{prefix}_hash"], info[f"new_{prefix}_hash"] = file_model_hashes(p)
        return info

    def enable_gradient_checkpointing(self, unet: torch.nn.Module, text_encoders: Sequence = ()) -> None:
        """Turn on activation checkpointing in the UNet and in the given (trained) text encoders, which are
        put in train mode as kohya does (CLIP has no dropout, so only checkpointing changes)."""
        self._checkpoint_unet(unet)
        for te in text_encoders:
            te.gradient_checkpointing_enable()
            te.train()  # kohya-compat: trained text encoders run in train mode

    def _checkpoint_unet(self, unet: torch.nn.Module) -> None:
        """UNet activation checkpointing (diffusers API; SDXL overrides)."""
        unet.enable_gradient_checkpointing()

    def use_xformers(self, unet: torch.nn.Module) -> None:
        """``--xformers``: xformers memory-efficient attention in the UNet (PyTorch SDPA otherwise).

        Raises:
            UserError: xformers cannot be imported, or diffusers refuses it (no CUDA device).
        """
        require_xformers()
        try:
            unet.enable_xformers_memory_efficient_attention()
        except (ImportError, ValueError) as exc:
            raise UserError(f"--xformers: {first_line(exc)}; use --sdpa") from None

    def latent_encoder(self, vae: torch.nn.Module, device, generator: torch.Generator):
        """``images (B, 3, H, W) in [−1, 1] -> unscaled latents (B, 4, H/8, W/8)`` float32 on the CPU.

        Uses ``latent_dist.sample()`` (not the mean, kohya-compat) drawn from ``generator``.
        """
        def encode(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                x = images.to(device, next(vae.parameters()).dtype)
                return vae.encode(x).latent_dist.sample(generator=generator).float().cpu()

        return encode

    def plugin_text_encoders(self, models) -> Any:
        """Text encoder(s) as kohya plugins expect: one module (SD) or ``[te1, te2]`` (SDXL)."""
        tes = list(models.text_encoders)
        return tes[0] if len(tes) == 1 else tes

    def _build_tokenizers(self) -> list:
        """One tokenizer per text encoder of the family (built offline, or from kohya's cache folders)."""
        return [load_tokenizer(slot.tokenizer, self.tokenizer_cache_dir) for slot in self.spec.text_encoders]

    @abc.abstractmethod
    def encode(self, text_encoders: Sequence[torch.nn.Module], tokens: list[torch.Tensor]) -> Conds:
        """Encode tokens (from :meth:`tokenize`) into :class:`Conds`."""

    @abc.abstractmethod
    def predict(self, unet: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, conds: Conds,
                batch: dict) -> torch.Tensor:
        """UNet prediction (B, 4, h, w) for noisy latents ``x_t`` at timesteps ``t`` (B,)."""

    def base_model_version(self) -> str:
        """``ss_base_model_version`` value (FORMAT.md §4): ``sd_v1``, ``sd_v2_v``, ``sdxl_base_v1-0`` …"""
        return self.spec.base_model_version(self.v_parameterization)

    def modelspec_architecture(self, v_param: bool) -> str:
        """``modelspec.architecture`` value (FORMAT.md §5), e.g. ``stable-diffusion-v2-768-v/lora``."""
        return self.spec.modelspec_architecture(v_param) + "/lora"


def require_xformers() -> None:
    """Import ``xformers.ops`` or raise a one-line :class:`UserError` (``--xformers``)."""
    import importlib

    try:
        importlib.import_module("xformers.ops")
    except ImportError as exc:
        raise UserError(f"--xformers: the 'xformers' package is not installed or broken ({exc}); "
                        "pip install xformers, or use --sdpa") from None


def family_kwargs(options) -> dict:
    """Family constructor arguments from :class:`sd_train.options.TrainOptions`."""
    m = options.model
    return {"v2": m.v2, "v_parameterization": m.v_parameterization, "max_token_length": m.max_token_length,
            "clip_skip": m.clip_skip, "tokenizer_cache_dir": m.tokenizer_cache_dir,
            "weighted_captions": options.dataset.weighted_captions}
