"""The caption pipeline of DATASET.md §5 and the declaration of every caption rule.

A caption rule is declared once, in ``CAPTION_RULES``: its option (``--name`` on the command line and
``name`` in the dataset TOML), the TOML tables that may set it, its default, its one-line help and
whether it makes captions random. The fields of :class:`CaptionOptions`, of the resolved subset
(``library.dataset.specs.SubsetSpec``), of the command-line fallbacks (``library.dataset.config.CliDefaults``),
the dataset-TOML schema and the trainer's ``DatasetOptions`` are all generated from it
(:func:`add_caption_fields`). kohya's rules run in :func:`process_caption` in kohya's order; a rule
added later brings its own ``apply`` function, which runs after them.

Pure: randomness comes from an explicit ``random.Random``. The draw order matches kohya's
``process_caption`` (dropout, wildcard line, wildcard choices, shuffle, tag dropout), so the same
decisions are taken, only from a private generator.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

WILDCARD = re.compile(r"\{([^}]+)\}")
OPEN_ESCAPE, CLOSE_ESCAPE = "\u2985", "\u2986"
_TOML_TYPES = {bool: "bool", int: "int", float: "num", str: "str"}


@dataclass(frozen=True)
class CaptionRule:
    """One caption rule, declared once.

    Attributes:
        name: ``--name`` on the command line, ``name`` in the dataset TOML and the field name everywhere.
        default: the value when neither the dataset TOML nor the command line sets it.
        help: the one-line help of ``--name``.
        type: ``bool``, ``int``, ``float`` or ``str`` (a ``str`` rule may default to ``None``).
        levels: dataset-TOML tables that may set it: ``G`` [general], ``D`` [[datasets]], ``S``
            [[datasets.subsets]]; a subset falls back to its dataset, then [general], then the command line.
        common: most runs set it (★ in the flag table).
        random: a set value makes the caption differ between fetches (no text-encoder output cache).
        apply: ``(caption, value, rng) -> caption`` of a rule added after kohya's; it runs after the
            built-in steps when its value is set. ``None`` for kohya's rules (steps of :func:`process_caption`).
    """

    name: str
    default: Any
    help: str
    type: type = str
    levels: str = "GDS"
    common: bool = False
    random: bool = False
    apply: Callable[[str, Any, random.Random], str] | None = None

    @property
    def toml_type(self) -> str:
        """The dataset-TOML type name (``library.dataset.config.type_ok``); floats accept integers."""
        return _TOML_TYPES[self.type]

    @property
    def annotation(self) -> str:
        """The field annotation, e.g. ``"float"`` or ``"str | None"``."""
        return self.type.__name__ + (" | None" if self.default is None else "")


CAPTION_RULES: tuple[CaptionRule, ...] = (
    CaptionRule("shuffle_caption", False, "Shuffle the separated tags of each caption on every fetch", bool,
                common=True, random=True),
    CaptionRule("caption_separator", ",", "Tag separator"),
    CaptionRule("keep_tokens", 0, "Keep the first N tags in place when shuffling or dropping", int, common=True),
    CaptionRule("keep_tokens_separator", "", "Separator marking the fixed prefix / flexible / fixed suffix parts"),
    CaptionRule("secondary_separator", None, "Joins words that move as one tag"),
    CaptionRule("enable_wildcard", False, "{a|b|c} choices and multi-line captions", bool, random=True),
    CaptionRule("caption_prefix", None, "Text added before every caption"),
    CaptionRule("caption_suffix", None, "Text added after every caption"),
    CaptionRule("caption_dropout_rate", 0.0, "Probability of replacing a whole caption with ''", float, random=True),
    CaptionRule("caption_dropout_every_n_epochs", 0, "Drop every caption in epochs where epoch % N == 0", int,
                random=True),
    CaptionRule("caption_tag_dropout_rate", 0.0, "Probability of dropping each flexible tag", float, random=True),
    CaptionRule("token_warmup_min", 1, "Tags used at step 0 of the tag warm-up", int),
    CaptionRule("token_warmup_step", 0, "Steps until all tags are used (< 1: fraction of --max_train_steps)", float,
                random=True),
)


@dataclass(frozen=True)
class CaptionRewrite:
    """Run-level caption rewriting of textual inversion and pivotal tuning (not a per-subset rule).

    Applied after the prefix and suffix are added and before dropout, wildcards, shuffling and
    ``keep_tokens``, so a placeholder written in a caption, a ``class_tokens`` folder name or a prefix
    becomes its new tokens and still counts as one tag.

    Attributes:
        replacements: ``(placeholder, tokens)`` pairs; a placeholder is replaced where it stands as a whole
            word (case-sensitive): ``TOK`` in ``a TOK dog`` or ``TOK, red`` but not in ``TOKYO``.
        templates: kohya's ``--use_object_template`` / ``--use_style_template``: each fetch replaces the
            caption by one of these, drawn from the sample's generator.
    """

    replacements: tuple[tuple[str, str], ...] = ()
    templates: tuple[str, ...] = ()

    def apply(self, caption: str, rng: random.Random) -> str:
        """The rewritten caption (one draw from ``rng`` when there are templates)."""
        return self.replace(rng.choice(self.templates) if self.templates else caption)

    def replace(self, text: str) -> str:
        """``text`` with every placeholder (a whole word) replaced by its tokens."""
        if not self.replacements:
            return text
        table = dict(self.replacements)
        words = "|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))
        return re.sub(rf"(?<!\w)(?:{words})(?!\w)", lambda m: table[m.group(0)], text)


def add_caption_fields(after: str | None = None, make_field: Callable[[CaptionRule], Any] | None = None):
    """Class decorator (put it under ``@dataclass``): one annotated field per caption rule.

    Args:
        after: insert the fields after this field of the class (default: at the end).
        make_field: the class attribute of a rule (default: ``dataclasses.field(default=rule.default)``),
            e.g. an option declaration carrying the help text.
    """
    def wrap(cls):
        own = dict(cls.__dict__.get("__annotations__", {}))
        names = list(own)
        at = names.index(after) + 1 if after else len(names)
        added = {rule.name: rule.annotation for rule in CAPTION_RULES}
        cls.__annotations__ = {**{n: own[n] for n in names[:at]}, **added, **{n: own[n] for n in names[at:]}}
        for rule in CAPTION_RULES:
            setattr(cls, rule.name, make_field(rule) if make_field else dataclasses.field(default=rule.default))
        return cls

    return wrap


@dataclass(frozen=True)
@add_caption_fields()
class CaptionOptions:
    """Per-subset caption settings: one field per :data:`CAPTION_RULES` entry (DATASET.md §3.1)."""

    @classmethod
    def from_subset(cls, subset) -> "CaptionOptions":
        """Build from any object with the subset attribute names (e.g. ``SubsetSpec``)."""
        return cls(**{name: getattr(subset, name) for name in cls.__dataclass_fields__})

    def random_settings(self) -> list[str]:
        """Names of the set rules that make captions differ between fetches."""
        return [r.name for r in CAPTION_RULES if r.random and getattr(self, r.name)]

    def is_random(self) -> bool:
        """True when processing can differ between fetches (forbids TE-output caching)."""
        return bool(self.random_settings())


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
                    max_train_steps: int = 1600, rewrite: CaptionRewrite | None = None) -> str:
    """Apply DATASET.md §5 steps 1-5 to one raw caption.

    Args:
        caption: the raw caption (may hold several lines with wildcards).
        opts: the subset's caption settings.
        rng: private generator for this sample; consumed in kohya's draw order.
        current_epoch: the trainer's epoch, counted from 1.
        current_step: the trainer's global step (token warm-up).
        max_train_steps: for fractional ``token_warmup_step``.
        rewrite: placeholders / templates of textual inversion (:class:`CaptionRewrite`), applied first.
    """
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    if rewrite is not None:
        caption = rewrite.apply(caption, rng)
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
    for rule in CAPTION_RULES:
        value = getattr(opts, rule.name)
        if rule.apply is not None and value:
            caption = rule.apply(caption, value, rng)
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
