"""Text encoder for part of the run: ``--stop_text_encoder_training N`` / ``--train_text_encoder_frac F``.

After optimizer step N (``ceil(F × max_train_steps)``; kohya_ss's rule for its percentage) the plugin's
text-encoder parameters (kohya names ``lora_te*``) stop requiring gradients: their gradients are None, so
the optimizer leaves them, and their optimizer state, as they are. From then on the text encoders run
without autograd, and when a caption always encodes the same way (no caption randomness, no dropout in the
network) each caption is encoded once and its output reused. See docs/DECISIONS.md ("Text encoder for part
of the run").
"""

from __future__ import annotations

import logging
import math

import torch

from library.dataset.latent_cache import caption_randomness
from library.errors import UserError
from sd_train.ema import named_trainable
from sd_train.families.base import Conds
from sd_train.network_host import parse_network_args

TE_PREFIX = "lora_te"  # kohya key prefix of text-encoder modules (lora_te, lora_te1, lora_te2)
DROPOUT_ARGS = ("dropout", "rank_dropout", "module_dropout")
logger = logging.getLogger(__name__)


def stop_step(stop: int | None, frac: float | None, max_train_steps: int) -> int | None:
    """The last optimizer step that trains the text encoder, or ``None`` (it trains throughout)."""
    if stop is not None:
        return stop
    if frac is None:
        return None
    return max(1, math.ceil(round(frac * max_train_steps, 9)))  # round: 0.07 × 700 is 49, not 49.000…01


def _not_cacheable(trainer) -> str | None:
    """Why the text-encoder outputs cannot be reused once it is frozen (``None``: they can)."""
    if _rows_train(trainer):
        return "new token embeddings train (--train_text_encoder_ti)"
    random = [n for ds in filter(None, (trainer.dataset, trainer.val_dataset))
              for _, used in caption_randomness(ds) for n in used]
    if random:
        return f"caption randomness: {', '.join(dict.fromkeys(random))}"
    n = trainer.opts.network
    args = parse_network_args(n.network_args)
    if n.network_dropout or any(float(args.get(k) or 0) for k in DROPOUT_ARGS):
        return "dropout in the network"
    return None


def _rows_train(trainer) -> bool:
    """Pivotal tuning trains new embedding rows, which need the text encoders' gradients."""
    pivot = getattr(trainer, "pivot", None)
    return bool(pivot and pivot.training)


class TextEncoderStop:
    """Freezes the text-encoder part of the network after its last step; reuses its outputs when it can."""

    def __init__(self, trainer):
        t, n, d = trainer.opts.training, trainer.opts.network, trainer.opts.dataset
        te_network = not n.network_train_unet_only and not d.cache_text_encoder_outputs  # its TE part trains
        self.step = stop_step(t.stop_text_encoder_training, t.train_text_encoder_frac, trainer.max_train_steps) \
            if te_network else None
        self.params = [p for n, p in named_trainable(trainer.host) if n.startswith(TE_PREFIX)] if self.step else []
        if self.step and not self.params:
            raise UserError(f"--network_module {trainer.host.module_name}: no text-encoder parameters (kohya names "
                            f"{TE_PREFIX}*) to stop training; drop --stop_text_encoder_training")
        self.frozen, self.memo = False, None
        if self.step is not None and trainer.progress.global_step >= self.step:  # resumed after the stop
            self.freeze(trainer)

    def after_step(self, trainer, step: int) -> None:
        """Freeze once optimizer step ``step`` reaches the stop step."""
        if self.step is not None and not self.frozen and step >= self.step:
            self.freeze(trainer)

    def freeze(self, trainer) -> None:
        """Stop the text-encoder parameters (their optimizer state stays) and start reusing outputs if possible."""
        for param in self.params:
            param.requires_grad_(False)
            param.grad = None
        trainer.train_te, self.frozen = _rows_train(trainer), True
        why = _not_cacheable(trainer)
        self.memo = {} if why is None else None
        reuse = "its outputs are cached from now on (one encode per caption)" if why is None else \
            f"its outputs are still computed every step ({why})"
        logger.info("text-encoder network frozen after step %d (%d parameters); %s", self.step, len(self.params),
                    reuse)

    def conds(self, trainer, captions: list[str]) -> Conds | None:
        """The batch's conditioning from the per-caption cache (``None`` when not caching)."""
        if self.memo is None:
            return None
        with torch.no_grad():
            for caption in dict.fromkeys(captions):
                if caption not in self.memo:
                    self.memo[caption] = trainer.family.encode_captions(trainer.models.text_encoders,
                                                                        [caption]).to("cpu")
        items = [self.memo[c] for c in captions]
        pooled = None if items[0].pooled is None else torch.cat([i.pooled for i in items])
        return Conds(torch.cat([i.context for i in items]), pooled)

    def run_metadata(self, opts) -> dict[str, str]:
        """``ss_stop_text_encoder_training``: the last step that trained the text encoder."""
        return {} if self.step is None or opts.saving.no_metadata else {"ss_stop_text_encoder_training": str(self.step)}
