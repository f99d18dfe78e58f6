"""Text conditioning shared by the training families and the cache tools (TRAINING.md §3).

Long-caption chunking (§3.1), re-joining of chunk states (§3.2), the offline tokenizers with
kohya's ``--tokenizer_cache_dir`` folders (§2.3) and SDXL's two-encoder conditioning (§3.3).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

CHUNK = 77  # kohya-compat: CLIP context length; long captions are cut into 77-token chunks


def chunk_token_ids(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Cut padded token ids into ``[BOS] + 75 tokens + [last]`` chunks (TRAINING.md §3.1).

    Args:
        ids: (B, max_length) ids padded/truncated to ``max_length`` = 77, 152 or 227.
        eos_id, pad_id: the tokenizer's EOS and PAD ids.

    Returns:
        (B, n, 77) with n = 1, 2 or 3. When pad ≠ EOS, a chunk ending ``<x> <PAD>`` gets EOS last and
        a chunk starting ``<BOS> <PAD>`` gets EOS at position 1 (kohya-compat).
    """
    length = ids.shape[1]
    if length <= CHUNK:
        return ids.unsqueeze(1)
    chunks = []
    for i in range(1, length - CHUNK + 2, CHUNK - 2):
        chunk = torch.cat([ids[:, :1], ids[:, i:i + CHUNK - 2], ids[:, -1:]], dim=1)
        if pad_id != eos_id:
            real_end = (chunk[:, -2] != eos_id) & (chunk[:, -2] != pad_id)
            chunk[real_end, -1] = eos_id
            chunk[chunk[:, 1] == pad_id, 1] = eos_id
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def join_chunk_states(states: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Re-join per-chunk hidden states (B·n, 77, D) into (B, 1 + 75·n + 1, D) (TRAINING.md §3.2).

    Keeps the BOS state of chunk 0, the interior 75 states of every chunk, and the last state of the
    last chunk. A single chunk is returned as (B, 77, D) unchanged.
    """
    states = states.reshape(batch_size, -1, states.shape[-1])
    if states.shape[1] == CHUNK:
        return states
    parts = [states[:, :1]]
    for i in range(1, states.shape[1], CHUNK):
        parts.append(states[:, i:i + CHUNK - 2])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def load_tokenizer(kind: str, cache_dir: str | None):
    """Build an offline CLIP tokenizer; prefer kohya's cached files under ``--tokenizer_cache_dir``.

    Args:
        kind: ``"clip_l"`` (SD1, SDXL TE1; pads with EOS), ``"openclip_bigg"`` (SDXL TE2) or
            ``"sd2"`` (both OpenCLIP: pad with id 0, ``!``).
        cache_dir: ``--tokenizer_cache_dir`` or ``None``.
    """
    from library.text.tokenizer import ClipTokenizer, resolve_tokenizer_dir

    builtin = ClipTokenizer.clip_l() if kind == "clip_l" else ClipTokenizer.openclip()
    folder = resolve_tokenizer_dir(cache_dir, kind)  # kohya-compat: kohya's tokenizer cache folders
    if folder is None:
        return builtin
    cached = ClipTokenizer.from_dir(folder, pad_token_id=builtin.pad_token_id)
    if not cached.same_vocabulary(builtin):
        logger.warning("%s: tokenizer vocabulary differs from the built-in CLIP vocabulary; using the cached one",
                       folder)
    return cached


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def encode_sdxl(text_encoders: Sequence[torch.nn.Module], tokens: Sequence[torch.Tensor]):
    """SDXL conditioning from ``[ids1, ids2]`` (each (B, n, 77)) (TRAINING.md §3.3).

    TE1 and TE2 give ``hidden_states[-2]`` without the final LayerNorm; pooled = TE2's
    ``text_embeds`` (projection at the first EOS) of the first chunk.

    Returns:
        ``(hidden1 (B, L, D1), hidden2 (B, L, D2), pooled (B, P))``.
    """
    (te1, te2), (ids1, ids2) = text_encoders, tokens
    batch, n = ids1.shape[0], ids1.shape[1]
    out1 = te1(ids1.reshape(-1, ids1.shape[-1]).to(device_of(te1)), output_hidden_states=True)
    out2 = te2(ids2.reshape(-1, ids2.shape[-1]).to(device_of(te2)), output_hidden_states=True)
    h1 = join_chunk_states(out1.hidden_states[-2], batch)
    h2 = join_chunk_states(out2.hidden_states[-2], batch)
    return h1, h2, out2.text_embeds[::n]
