"""A1111 attention weights in captions: ``--weighted_captions`` (TRAINING.md §3.1).

``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:w)`` multiplies it
by ``w``; brackets nest and multiply; ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal
characters. Every token gets the weight of the text it came from (BOS, EOS and padding get 1.0),
the weights are chunked exactly like the token ids, and the encoded hidden states are multiplied by
them without re-normalizing their mean (kohya-ss/sd-scripts ``strategy_base.py`` /
``strategy_sd.py`` / ``strategy_sdxl.py``).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from library.errors import UserError
from library.text.conditioning import CHUNK, chunk_token_ids

ROUND_MULTIPLIER = 1.1  # kohya-compat: A1111's "(x)" emphasis factor
SQUARE_MULTIPLIER = 1 / 1.1  # kohya-compat: A1111's "[x]" de-emphasis factor

# kohya-compat: kohya's variant of A1111's attention regex (no BREAK, no spaces around ":w").
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:([+-]?[.\d]+)\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)


def _multiply_from(parts: list[list], start: int, factor: float) -> None:
    """Multiply the weight of every segment from index ``start`` on by ``factor``."""
    for part in parts[start:]:
        part[1] *= factor


def _weight_value(text: str, group: str, caption: str) -> float:
    try:
        return float(group)
    except ValueError:  # sd-train: kohya crashes with a ValueError traceback
        raise UserError(f"caption {caption!r}: {text!r} is not a valid attention weight; fix the caption "
                        "or drop --weighted_captions") from None


def _merge_equal_runs(parts: list[list]) -> list[tuple[str, float]]:
    """Join neighbouring segments whose weights are exactly equal."""
    merged: list[list] = []
    for text, weight in parts:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a caption into ``(text, weight)`` segments with A1111 attention semantics.

    An unmatched ``)`` or ``]`` is literal text; a bracket left open applies its factor to the
    rest of the caption; a lone backslash is dropped; ``BREAK`` is plain text (kohya-compat).
    Neighbouring segments with equal weights are merged; an empty caption gives ``[("", 1.0)]``.

    Args:
        text: The caption after caption processing (shuffle, dropout, ...).

    Returns:
        Segments in caption order, e.g. ``"a (b:1.5) [c]"`` ->
        ``[("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1/1.1)]``.

    Raises:
        UserError: ``(x:w)`` where ``w`` is not a number (for example ``1.2.3``).
    """
    parts: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            _multiply_from(parts, round_open.pop(), _weight_value(token, weight, text))
        elif token == ")" and round_open:
            _multiply_from(parts, round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            _multiply_from(parts, square_open.pop(), SQUARE_MULTIPLIER)
        else:
            parts.append([token, 1.0])
    for start in round_open:
        _multiply_from(parts, start, ROUND_MULTIPLIER)
    for start in square_open:
        _multiply_from(parts, start, SQUARE_MULTIPLIER)
    return _merge_equal_runs(parts or [["", 1.0]])


def caption_token_weights(tokenizer, caption: str, max_length: int) -> tuple[list[int], list[float]]:
    """Token ids and per-token weights of one caption, padded like ``ClipTokenizer.tokenize``.

    Each segment of :func:`parse_prompt_attention` is tokenized on its own (without BOS/EOS) and its
    tokens get its weight; the body is truncated to ``max_length - 2`` tokens, then wrapped as
    ``BOS + body + EOS`` and padded with ``tokenizer.pad_token_id``. BOS, EOS and padding weigh 1.0.

    Args:
        tokenizer: A :class:`library.text.tokenizer.ClipTokenizer`.
        caption: One caption.
        max_length: Row length (77, 152 or 227).

    Returns:
        ``(ids, weights)``, two lists of length ``max_length``.
    """
    ids: list[int] = []
    weights: list[float] = []
    for segment, weight in parse_prompt_attention(caption):
        seg_ids = tokenizer.encode_without_specials(segment)
        ids += seg_ids
        weights += [weight] * len(seg_ids)
    body = max_length - 2
    ids, weights = ids[:body], weights[:body]
    pad = max_length - 2 - len(ids)
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    return ids, [1.0, *weights, 1.0] + [1.0] * pad


def tokenize_weighted(tokenizer, texts: str | Sequence[str],
                      max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch version of :func:`caption_token_weights`.

    Args:
        tokenizer: A :class:`library.text.tokenizer.ClipTokenizer`.
        texts: One caption or a list of captions.
        max_length: Row length; defaults to ``tokenizer.model_max_length`` (77).

    Returns:
        ``(ids (B, max_length) int64, weights (B, max_length) float32)``. Without attention syntax
        (and without backslashes) ``ids`` equals ``tokenizer.tokenize(texts, max_length)`` and
        every weight is 1.0.
    """
    length = max_length or tokenizer.model_max_length
    batch = [texts] if isinstance(texts, str) else list(texts)
    rows = [caption_token_weights(tokenizer, text, length) for text in batch]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long).reshape(len(rows), length)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32).reshape(len(rows), length)
    return ids, weights


def chunk_token_weights(weights: torch.Tensor) -> torch.Tensor:
    """Cut (B, max_length) weights into (B, n, 77) chunks laid out like :func:`chunk_token_ids`.

    Chunk ``k`` holds the weights of tokens ``1 + 75k … 75 + 75k`` at positions 1…75 and 1.0 at
    positions 0 and 76 (kohya-compat: the BOS and last slots of every chunk are never weighted).
    """
    length = weights.shape[1]
    if length <= CHUNK:
        return weights.unsqueeze(1)
    n = (length - 2) // (CHUNK - 2)
    out = torch.ones(weights.shape[0], n, CHUNK, dtype=weights.dtype)
    for k in range(n):
        out[:, k, 1:CHUNK - 1] = weights[:, 1 + k * (CHUNK - 2):1 + (k + 1) * (CHUNK - 2)]
    return out


def tokenize_chunks_weighted(tokenizer, captions: Sequence[str],
                             max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ids and weights, both chunked to (B, n, 77) (TRAINING.md §3.1).

    The ids go through :func:`chunk_token_ids` (EOS fixes for pad ≠ EOS included); the weights
    through :func:`chunk_token_weights`.
    """
    ids, weights = tokenize_weighted(tokenizer, captions, max_length)
    return chunk_token_ids(ids, tokenizer.eos_token_id, tokenizer.pad_token_id), chunk_token_weights(weights)


def join_chunk_weights(weights: torch.Tensor) -> torch.Tensor:
    """(B, n, 77) chunk weights -> (B, L) weights aligned with the re-joined hidden states.

    L = 77 for one chunk (all 77 weights); otherwise ``1 + 75·n + 1``: 1.0 for the first BOS, the
    interior 75 weights of every chunk, 1.0 for the last position (kohya-compat).
    """
    if weights.shape[1] == 1:
        return weights[:, 0]
    ones = torch.ones(weights.shape[0], 1, dtype=weights.dtype, device=weights.device)
    return torch.cat([ones, weights[:, :, 1:CHUNK - 1].reshape(weights.shape[0], -1), ones], dim=1)


def apply_token_weights(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply re-joined hidden states by their token weights, without re-normalizing the mean.

    Args:
        states: (B, L, D) hidden states after the chunk re-join (L = 77, 152 or 227).
        weights: (B, n, 77) chunk weights from :func:`tokenize_chunks_weighted`.

    Returns:
        (B, L, D) in the dtype of ``states``; the product is taken in the promoted dtype (float32
        for half-precision states, as kohya does).
    """
    joined = join_chunk_weights(weights).to(states.device)
    return (states * joined.unsqueeze(-1)).to(states.dtype)
