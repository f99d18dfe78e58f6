"""The caption pipeline of DATASET.md §5. Pure: randomness comes from an explicit ``random.Random``.

The draw order matches kohya's ``process_caption`` (dropout, wildcard line, wildcard choices,
shuffle, tag dropout), so the same decisions are taken, only from a private generator.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

WILDCARD = re.compile(r"\{([^}]+)\}")
OPEN_ESCAPE, CLOSE_ESCAPE = "\u2985", "\u2986"


@dataclass(frozen=True)
class CaptionOptions:
    """Per-subset caption settings (the subset keys of DATASET.md §3.1 that affect captions)."""

    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    enable_wildcard: bool = False
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    caption_tag_dropout_rate: float = 0.0
    secondary_separator: str | None = None

    @classmethod
    def from_subset(cls, subset) -> "CaptionOptions":
        """Build from any object with the subset attribute names (e.g. ``SubsetSpec``)."""
        return cls(**{name: getattr(subset, name) for name in cls.__dataclass_fields__})

    def is_random(self) -> bool:
        """True when processing can differ between fetches (forbids TE-output caching)."""
        return bool(self.shuffle_caption or self.caption_dropout_rate > 0
                    or self.caption_dropout_every_n_epochs > 0 or self.caption_tag_dropout_rate > 0
                    or self.token_warmup_step > 0 or self.enable_wildcard)


def warmup_steps(token_warmup_step: float, max_train_steps: int) -> int:
    """``token_warmup_step`` in steps: values < 1 are a fraction of ``max_train_steps``."""
    if token_warmup_step < 1:
        return math.floor(token_warmup_step * max_train_steps)
    return int(token_warmup_step)


def apply_wildcards(caption: str, rng: random.Random) -> str:
    """Pick one line, then replace each ``{a|b|c}`` by a random choice; ``{{``/``}}`` escape."""
    lines = [line.strip() for line in caption.split("\n") if line.strip()]
    if len(lines) > 1:
        caption = rng.choice(lines)
    elif lines:
        caption = lines[0]
    caption = caption.replace("{{", OPEN_ESCAPE).replace("}}", CLOSE_ESCAPE)
    caption = WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(OPEN_ESCAPE, "{").replace(CLOSE_ESCAPE, "}")


def split_tags(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """Split into ``(fixed, flexible, fixed_suffix)`` tags (DATASET.md §5 step 4.1)."""
    sep, keep_sep = opts.caption_separator, opts.keep_tokens_separator
    if keep_sep and keep_sep in caption:
        fixed_part, flex_part = caption.split(keep_sep, 1)
        suffix_part = ""
        if keep_sep in flex_part:
            flex_part, suffix_part = flex_part.split(keep_sep, 1)

        def parts(text):
            return [t.strip() for t in text.split(sep) if t.strip()]

        return parts(fixed_part), parts(flex_part), parts(suffix_part)
    tokens = [t.strip() for t in caption.strip().split(sep)]
    if opts.keep_tokens > 0:
        return tokens[:opts.keep_tokens], tokens[opts.keep_tokens:], []
    return [], tokens, []


def _tag_operations(caption: str, opts: CaptionOptions, rng: random.Random, current_step: int,
                    max_train_steps: int) -> str:
    fixed, flex, suffix = split_tags(caption, opts)
    warmup = warmup_steps(opts.token_warmup_step, max_train_steps)
    if warmup and current_step < warmup:
        keep = math.floor(current_step * (len(flex) - opts.token_warmup_min) / warmup)
        flex = flex[:keep + opts.token_warmup_min]
    if opts.shuffle_caption:
        rng.shuffle(flex)
    if opts.caption_tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
    return ", ".join(fixed + flex + suffix)  # kohya-compat: always ", ", whatever the separator


def process_caption(caption: str, opts: CaptionOptions, rng: random.Random, *,
                    current_epoch: int = 1, current_step: int = 0,
                    max_train_steps: int = 1600) -> str:
    """Apply DATASET.md §5 steps 1-5 to one raw caption.

    Args:
        caption: the raw caption (may hold several lines with wildcards).
        opts: the subset's caption settings.
        rng: private generator for this sample; consumed in kohya's draw order.
        current_epoch: the trainer's epoch, counted from 1.
        current_step: the trainer's global step (token warm-up).
        max_train_steps: for fractional ``token_warmup_step``.
    """
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    drop = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    every = opts.caption_dropout_every_n_epochs
    if drop or (every > 0 and current_epoch % every == 0):
        return ""
    if opts.enable_wildcard:
        caption = apply_wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]
    if opts.shuffle_caption or opts.token_warmup_step > 0 or opts.caption_tag_dropout_rate > 0:
        caption = _tag_operations(caption, opts, rng, current_step, max_train_steps)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def count_tags(captions, into: dict[str, int] | None = None) -> dict[str, int]:
    """Tag frequencies for ``ss_tag_frequency``: split at ``,``, strip, lower-case, skip empty."""
    counts = {} if into is None else into
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts
