"""New token rows beside a frozen token-embedding table (textual inversion, pivotal tuning).

A text encoder whose tokenizer gained ``n`` tokens (ids ``V .. V+n-1`` after a vocabulary of ``V``) gets an
:class:`AddedTokenEmbedding` in place of its ``nn.Embedding``: the original table stays the frozen
``weight`` and only the ``n`` new rows are a parameter. No optimizer step, weight decay included, can move
an original row, and the text encoder's state-dict key, dtype and device of ``weight`` are unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class AddedTokenEmbedding(nn.Module):
    """``ids (B, L) -> (B, L, D)``: ids below ``V`` read the frozen table, the others the new rows.

    Args:
        table: the text encoder's token embedding (``weight`` ``(V, D)``); its parameter is reused.
        rows: ``(n, D)`` initial values of the new rows; kept as a float32 parameter ``added``.
    """

    def __init__(self, table: nn.Module, rows: torch.Tensor):
        super().__init__()
        self.weight = table.weight
        self.weight.requires_grad_(False)
        self.added = nn.Parameter(rows.detach().to(device=self.weight.device, dtype=torch.float32).clone())

    @property
    def vocab_size(self) -> int:
        """``V``: the number of original rows."""
        return self.weight.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look the ids up; the new rows are cast to the table's dtype."""
        vocab = self.vocab_size
        base = F.embedding(ids.clamp(max=vocab - 1), self.weight)
        new = F.embedding((ids - vocab).clamp(min=0), self.added).to(base.dtype)
        return torch.where((ids >= vocab).unsqueeze(-1), new, base)


def add_rows(text_encoder: nn.Module, rows: torch.Tensor) -> AddedTokenEmbedding:
    """Give ``text_encoder`` (with ``get_/set_input_embeddings``) ``rows`` ``(n, D)`` for its next ``n`` ids."""
    module = AddedTokenEmbedding(text_encoder.get_input_embeddings(), rows)
    text_encoder.set_input_embeddings(module)
    return module


def random_rows(table: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, D)`` normal rows scaled by the standard deviation of the whole table (diffusers' pivotal init)."""
    std = table.detach().float().std()
    return torch.randn(count, table.shape[1], generator=generator) * std.cpu()


def concept_rows(table: torch.Tensor, ids: Sequence[int], count: int, mean: bool) -> torch.Tensor:
    """``(count, D)`` rows from the embeddings of ``ids`` (an initializer word's tokens).

    Args:
        mean: every row is the mean of those embeddings; else row ``i`` copies ``ids[i % len(ids)]``
            (kohya's ``--init_word``: repeated or truncated to ``count``).
    """
    source = table.detach().float().cpu()[list(ids)]
    if mean:
        return source.mean(dim=0, keepdim=True).repeat(count, 1)
    return source[[i % len(ids) for i in range(count)]].clone()


def mean_row_norm(table: torch.Tensor) -> float:
    """Mean L2 norm of the rows of a token table (the scale ``--ti_norm_clip`` is relative to)."""
    return float(table.detach().float().norm(dim=1).mean())


@torch.no_grad()
def clip_row_norms(rows: torch.Tensor, max_norm: float) -> None:
    """Scale down, in place, every row of ``rows`` whose L2 norm exceeds ``max_norm``."""
    norms = rows.norm(dim=1, keepdim=True).clamp(min=1e-12)
    rows.mul_(torch.clamp(max_norm / norms, max=1.0))
