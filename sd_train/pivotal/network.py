"""The new tokens' embedding rows as a network plugin (kohya's protocol): what the textual-inversion entry
points train as their ``--network_module``, and what pivotal tuning trains beside the LoRA.

The module holds only the new rows (one ``(n, D)`` parameter per text encoder, shared with the text
encoders' :class:`library.embeddings.rows.AddedTokenEmbedding`), so its state dict, saves and optimizer state
never touch the frozen vocabulary. sd-train hooks beyond kohya's protocol: ``on_step_start`` keeps the rows
trainable only before the ``--train_text_encoder_ti_frac`` step, ``after_optimizer_step`` clips their norms.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from library.embeddings.files import Embedding, read_embedding, write_embedding
from library.embeddings.rows import AddedTokenEmbedding, clip_row_norms, mean_row_norm
from library.errors import UserError
from sd_train.pivotal.plan import placeholders_json

EMBEDDING_ARCHITECTURE = "/textual-inversion"  # kohya-compat: modelspec.architecture suffix of embeddings


class EmbeddingNetwork(nn.Module):
    """The trainable rows of new tokens; created empty, then :meth:`bind` gives it the rows."""

    def __init__(self):
        super().__init__()
        self.rows = nn.ParameterList()
        self.lr: float | None = None
        self.placeholders: dict[str, tuple[str, ...]] = {}
        self._active: Callable[[], bool] = lambda: True
        self._max_norms: list[float] = []

    def bind(self, modules: Sequence[AddedTokenEmbedding], placeholders: dict, lr: float | None,
             active: Callable[[], bool], norm_clip: float | None = None) -> None:
        """Take the new rows of ``modules`` (one per text encoder).

        Args:
            placeholders: ``{placeholder: token strings}`` (saved in file metadata).
            lr: their learning rate (``None``: the optimizer's default).
            active: whether the rows train now (asked before every micro-batch).
            norm_clip: ``--ti_norm_clip``: row norms are kept below it × each vocabulary's mean row norm.
        """
        self.rows.extend(m.added for m in modules)
        self.placeholders, self.lr, self._active = placeholders, lr, active
        self._max_norms = [norm_clip * mean_row_norm(m.weight) for m in modules] if norm_clip else []

    def vectors(self) -> tuple[torch.Tensor, ...]:
        """The rows, detached, one ``(n, D)`` tensor per text encoder."""
        return tuple(p.detach() for p in self.rows)

    def set_vectors(self, embedding: Embedding, where: str) -> None:
        """Copy an embedding's vectors into the rows (UserError when its shape does not fit)."""
        want = [tuple(p.shape) for p in self.rows]
        got = [tuple(v.shape) for v in embedding.vectors]
        if want != got:
            raise UserError(f"{where}: holds vectors of shapes {got}; this run's new tokens need {want} "
                            "(text encoders, tokens × width)")
        with torch.no_grad():
            for p, v in zip(self.rows, embedding.vectors):
                p.copy_(v)

    # kohya's plugin protocol
    def apply_to(self, text_encoder, unet, apply_text_encoder: bool = True, apply_unet: bool = True) -> None:
        """Nothing to patch: the rows live in the text encoders' token tables."""

    def prepare_optimizer_params(self, text_encoder_lr=None, unet_lr=None, default_lr=None):
        """One parameter group (``lr``: the plan's, else ``default_lr``) named ``embeddings``."""
        lr = self.lr if self.lr is not None else default_lr
        return [{"params": list(self.rows), **({"lr": lr} if lr is not None else {})}], ["embeddings"]

    def prepare_grad_etc(self, text_encoder, unet) -> None:
        """The rows require gradients (until :meth:`on_step_start` says otherwise)."""
        self.on_step_start()

    def on_epoch_start(self, text_encoder, unet) -> None:
        """Train mode (no effect on plain rows)."""
        self.train()

    def get_trainable_params(self) -> list[nn.Parameter]:
        """The rows that train now (clipping, averaging and the NaN guard see only these)."""
        return [p for p in self.rows if p.requires_grad]

    def save_weights(self, file: str, dtype: torch.dtype | None, metadata: dict | None) -> None:
        """Write the embedding file (kohya's layout: ``.pt`` dict or ``.safetensors``)."""
        write_embedding(Embedding(self.vectors()), file, "kohya", dtype=dtype,
                        metadata=embedding_metadata(metadata, self.placeholders))

    def load_weights(self, file: str) -> dict:
        """Load rows from an embedding file of any layout."""
        self.set_vectors(read_embedding(file), file)
        return {}

    # sd-train hooks
    def on_step_start(self, *_) -> None:
        """Rows train only while ``active()``; frozen rows have no gradient, so no optimizer moves them."""
        active = self._active()
        for p in self.rows:
            p.requires_grad_(active)
            if not active:
                p.grad = None

    def after_optimizer_step(self) -> None:
        """Clip the rows' norms (``--ti_norm_clip``)."""
        for p, limit in zip(self.rows, self._max_norms):
            clip_row_norms(p.data, limit)


def embedding_metadata(metadata: dict | None, placeholders: dict) -> dict[str, str]:
    """An embedding file's metadata: the run's ``modelspec.*`` (as an embedding) plus its placeholders."""
    out = {k: v for k, v in (metadata or {}).items() if k.startswith("modelspec.")}
    if "modelspec.architecture" in out:
        out["modelspec.architecture"] = out["modelspec.architecture"].rsplit("/", 1)[0] + EMBEDDING_ARCHITECTURE
    out["ss_token_abstraction"] = placeholders_json(placeholders)
    return out


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    """kohya's plugin entry: an empty :class:`EmbeddingNetwork` (the trainer binds the new rows)."""
    return EmbeddingNetwork()
