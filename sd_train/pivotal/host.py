"""The plugin host of a pivotal-tuning run: the LoRA network plus the new tokens' embedding rows.

The rows share the network's optimizer (their own parameter group ``embeddings``), gradient clipping,
averaging across processes, NaN guard and saves: every LoRA file gets ``{stem}_emb.safetensors`` beside
it (and, with ``--bundle_embeddings``, ``bundle_emb.<placeholder>.*`` keys inside it).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch

from library.embeddings.files import bundle_keys
from library.lora.file import load_tensors
from library.io.safetensors_io import save_lora_file
from sd_train.checkpointing import embedding_file
from sd_train.network_host import NetworkHost
from sd_train.pivotal.network import EmbeddingNetwork
from sd_train.pivotal.plan import TokenPlan

logger = logging.getLogger(__name__)


class PivotalHost(NetworkHost):
    """A :class:`NetworkHost` whose network trains together with an :class:`EmbeddingNetwork`.

    Args:
        host: the host of the created network (its module and network are taken over).
        embeddings: the bound embedding rows. plan: the run's :class:`TokenPlan`. init: how the rows started.
    """

    def __init__(self, host: NetworkHost, embeddings: EmbeddingNetwork, plan: TokenPlan, init: str):
        super().__init__(host.module, host.module_name)
        self.network, self.embeddings, self.plan, self.init = host.network, embeddings, plan, init

    def optimizer_groups(self, te_lrs: Sequence[float] | None, unet_lr: float | None,
                         lr: float) -> tuple[list[dict], list[str]]:
        """The network's groups, then the rows' ``embeddings`` group."""
        groups, descs = super().optimizer_groups(te_lrs, unet_lr, lr)
        extra, names = self.embeddings.prepare_optimizer_params(None, None, lr)
        return groups + extra, descs + names

    def get_trainable_params(self) -> list[torch.nn.Parameter]:
        """The network's parameters, then the rows that train now."""
        return super().get_trainable_params() + self.embeddings.get_trainable_params()

    def on_step_start(self, text_encoders, unet) -> None:
        """The network's hook, then the rows' (which stop training at the fraction's step)."""
        super().on_step_start(text_encoders, unet)
        self.embeddings.on_step_start()

    def save(self, path: str, dtype: torch.dtype | None, metadata: Mapping[str, str] | None) -> None:
        """Write the LoRA (with the tokens' ``ss_*`` keys and, if asked, the bundled rows), then its
        ``_emb.safetensors`` (both atomically)."""
        meta = {**(metadata or {}), **self.plan.metadata(self.init)}
        super().save(path, dtype, meta)
        vectors = self.embeddings.vectors()
        if self.plan.bundle:
            tensors, stored = load_tensors(path)
            for placeholder, rows in self._split(vectors).items():
                tensors.update({k: v.to(dtype or v.dtype) for k, v in bundle_keys(placeholder, rows).items()})
            save_lora_file(tensors, path, stored or meta)
        emb = embedding_file(path)
        self.embeddings.save_weights(str(emb), dtype, meta)
        logger.info("saved %s: prompt with '%s' in A1111, 'embedding:%s' in ComfyUI (with the LoRA loaded)",
                    emb.name, emb.stem, emb.stem)

    def _split(self, vectors: tuple[torch.Tensor, ...]) -> dict[str, list[torch.Tensor]]:
        """``{placeholder: its rows per text encoder}`` (a bundled embedding per placeholder)."""
        out, start = {}, 0
        for placeholder, tokens in self.plan.placeholders.items():
            out[placeholder] = [v[start:start + len(tokens)] for v in vectors]
            start += len(tokens)
        return out
