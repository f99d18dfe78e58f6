"""Offline CLIP BPE tokenizer (TRAINING.md §2.3).

The vocabulary is built from ``bpe_simple_vocab_16e6.txt.gz``, which the ``open-clip-torch`` package
ships; the package is located with ``importlib`` and never imported. Text cleaning and the
pre-tokenization regex follow transformers 4.x ``CLIPTokenizer`` with ``ftfy`` installed, which is
what kohya-ss/sd-scripts uses, so the ids are the same.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import ftfy
import regex
import torch

from library.errors import UserError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
            r"|[^\s\p{L}\p{N}]+")


def byte_unicode_table() -> dict[int, str]:
    """Map each byte 0..255 to a printable unicode character (GPT-2 / CLIP byte-level BPE).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in increasing byte order,
    to ``chr(256)``, ``chr(257)``, ... The dict's insertion order is the vocabulary order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def default_bpe_path() -> Path:
    """Path of open-clip-torch's bundled ``bpe_simple_vocab_16e6.txt.gz`` (package not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("open-clip-torch is not installed; run `pip install open-clip-torch` "
                        "(sd-train needs its bundled BPE vocabulary)")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise UserError(f"{path}: missing from open-clip-torch; reinstall open-clip-torch")
    return path


def builtin_vocabulary(bpe_path: str | os.PathLike | None = None,
                       num_merges: int = 48894) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build CLIP's 49,408-entry vocabulary and merge list from the BPE file.

    Args:
        bpe_path: The ``.txt.gz`` merge file; defaults to :func:`default_bpe_path`.
        num_merges: How many merges to use (lines 1..num_merges after the header).

    Returns:
        ``(vocab, merges)``: token string -> id, and merge pairs in priority order.
    """
    with gzip.open(bpe_path or default_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:num_merges + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(byte_unicode_table().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def resolve_tokenizer_dir(cache_dir: str | os.PathLike | None, kind: str) -> Path | None:
    """Find kohya's saved tokenizer folder for ``kind`` under ``--tokenizer_cache_dir``.

    Args:
        cache_dir: The cache folder, or ``None``.
        kind: a family's tokenizer kind (``TextEncoderSlot.tokenizer``: ``"clip_l"``, ``"openclip_bigg"`` …).

    Returns:
        The folder holding ``vocab.json`` and ``merges.txt``, or ``None`` when there is none.
    """
    from library.models.families import kohya_tokenizer_dirs

    dirs = kohya_tokenizer_dirs()
    if kind not in dirs:
        raise ValueError(f"unknown tokenizer kind {kind!r}; use one of {sorted(dirs)}")
    if cache_dir is None:
        return None
    for sub in dirs[kind]:
        folder = Path(cache_dir) / sub
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
    return None


class ClipTokenizer:
    """CLIP byte-level BPE tokenizer with fixed-length batching.

    Args:
        vocab: Token string -> id; must contain ``<|startoftext|>`` and ``<|endoftext|>``.
        merges: BPE merge pairs, highest priority first.
        pad_token_id: Id used to fill short sequences (49407 for CLIP-L, 0 for OpenCLIP).
        model_max_length: Default sequence length of :meth:`tokenize`.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token_id: int,
                 model_max_length: int = 77):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.bos_token_id = self.vocab[BOS_TOKEN]
        self.eos_token_id = self.vocab[EOS_TOKEN]
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length
        self._ranks = {pair: i for i, pair in enumerate(self.merges)}
        self._specials = {BOS_TOKEN: self.bos_token_id, EOS_TOKEN: self.eos_token_id}
        self._bytes = byte_unicode_table()
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._bpe_cache: dict[str, tuple[str, ...]] = {}  # per instance; plain dict pickles
        self.added_tokens: dict[str, int] = {}  # textual inversion: whole strings with their own ids
        self._added_pattern = None
        # kohya-compat: transformers' CLIPTokenizer with pad_token "!" (SD2, SDXL TE2) treats every
        # "!" in a caption as that special token and never BPE-merges it.
        pad_text = next((t for t, i in self.vocab.items() if i == pad_token_id), None)
        self._pad_text = pad_text if pad_token_id != self.eos_token_id else None

    @classmethod
    def clip_l(cls) -> "ClipTokenizer":
        """OpenAI CLIP-L tokenizer (SD1, SDXL TE1): pads with ``<|endoftext|>`` (49407)."""
        vocab, merges = builtin_vocabulary()
        return cls(vocab, merges, pad_token_id=vocab[EOS_TOKEN])

    @classmethod
    def openclip(cls) -> "ClipTokenizer":
        """OpenCLIP tokenizer (SD2, SDXL TE2): same vocabulary, pads with id 0 (``!``)."""
        vocab, merges = builtin_vocabulary()
        return cls(vocab, merges, pad_token_id=0)  # kohya-compat: TE2 pad forced to "!"

    @classmethod
    def from_dir(cls, path: str | os.PathLike, pad_token_id: int) -> "ClipTokenizer":
        """Load ``vocab.json`` and ``merges.txt`` from a saved transformers tokenizer folder."""
        folder = Path(path)
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder}: cannot read vocab.json/merges.txt ({exc}); "
                            "fix or remove this tokenizer cache folder") from exc
        merges = [tuple(ln.split()) for ln in lines if ln.strip() and not ln.startswith("#version")]
        if BOS_TOKEN not in vocab or EOS_TOKEN not in vocab:
            raise UserError(f"{folder / 'vocab.json'}: not a CLIP vocabulary (no {BOS_TOKEN}/"
                            f"{EOS_TOKEN}); fix or remove this tokenizer cache folder")
        return cls(vocab, merges, pad_token_id=pad_token_id)

    def same_vocabulary(self, other: "ClipTokenizer") -> bool:
        """Whether ``other`` has identical vocabulary and merges (for the cache-dir warning)."""
        return self.vocab == other.vocab and self.merges == other.merges

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Add whole-string tokens with new ids after the vocabulary (and earlier added tokens).

        An added token is matched in the raw text, case-sensitively and before cleaning, and never split
        by BPE (transformers' ``add_tokens``). Used for textual-inversion and pivotal-tuning tokens.

        Returns:
            The new ids, in the order given.

        Raises:
            UserError: a token is empty, holds whitespace, is already in the vocabulary or was added before.
        """
        for token in tokens:
            if not token or regex.search(r"\s", token):
                raise UserError(f"token {token!r}: new tokens must be non-empty and hold no whitespace")
            if token in self.vocab or token in self.added_tokens or tokens.count(token) > 1:
                raise UserError(f"token {token!r} already exists in the tokenizer; choose another token string")
        first = len(self.vocab) + len(self.added_tokens)
        self.added_tokens.update({t: first + i for i, t in enumerate(tokens)})
        longest_first = sorted(self.added_tokens, key=len, reverse=True)
        self._added_pattern = regex.compile("(" + "|".join(regex.escape(t) for t in longest_first) + ")")
        return [self.added_tokens[t] for t in tokens]

    def __len__(self) -> int:
        """Number of ids: the vocabulary plus the added tokens."""
        return len(self.vocab) + len(self.added_tokens)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Apply the merges to one byte-encoded word; the last symbol carries ``</w>``."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    @staticmethod
    def clean(text: str) -> str:
        """ftfy-fix, collapse whitespace, strip and lower-case (transformers 4.x CLIPTokenizer)."""
        return regex.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()

    def encode_without_specials(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS and without truncation."""
        if self._added_pattern is not None:
            pieces = self._added_pattern.split(text)  # odd positions: the added tokens themselves
            return [i for k, piece in enumerate(pieces)
                    for i in ([self.added_tokens[piece]] if k % 2 else self._encode_unadded(piece))]
        return self._encode_unadded(text)

    def _encode_unadded(self, text: str) -> list[int]:
        if self._pad_text and self._pad_text in text:
            ids = []
            for i, part in enumerate(text.split(self._pad_text)):
                ids += ([self.pad_token_id] if i else []) + self._encode_plain(part)
            return ids
        return self._encode_plain(text)

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pattern.findall(self.clean(text)):
            if piece in self._specials:
                ids.append(self._specials[piece])
                continue
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            if word not in self._bpe_cache:
                self._bpe_cache[word] = self._bpe(word)
            ids.extend(self.vocab.get(t, self.eos_token_id) for t in self._bpe_cache[word])
        return ids

    def encode(self, text: str) -> list[int]:
        """``[BOS] + ids + [EOS]`` for one caption, not truncated."""
        return [self.bos_token_id, *self.encode_without_specials(text), self.eos_token_id]

    def tokenize(self, texts: str | list[str], max_length: int | None = None) -> torch.Tensor:
        """Encode a batch to fixed length.

        Each row is ``BOS + tokens[:max_length - 2] + EOS``, then ``pad_token_id`` up to
        ``max_length``, so truncation always keeps EOS.

        Args:
            texts: One caption or a list of captions.
            max_length: Row length; defaults to ``model_max_length`` (77).

        Returns:
            ``(B, max_length)`` int64 ids.
        """
        length = max_length or self.model_max_length
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for text in batch:
            body = self.encode_without_specials(text)[: length - 2]
            row = [self.bos_token_id, *body, self.eos_token_id]
            rows.append(row + [self.pad_token_id] * (length - len(row)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)
