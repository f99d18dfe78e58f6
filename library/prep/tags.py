"""Caption and tag text operations of ``edit_captions`` and the tagger (pure functions).

A caption is treated as a list of tags split at the separator (``,`` by default) and stripped;
sentence captions are one "tag" each, so word-level operations (trigger replacement) work on them too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

# A1111 weights: (tag:1.2), (tag), ((tag)), [tag]; the weight-free text is kept.
_WEIGHTED = re.compile(r"^[(\[]+\s*(.*?)\s*(?::\s*-?[\d.]+)?\s*[)\]]+$")


def split_tags(text: str, separator: str = ",") -> list[str]:
    """Tags of one caption: split at ``separator`` (stripped of spaces), each stripped, empties dropped.
    Multi-line captions are joined first."""
    sep = separator.strip() or separator
    return [t.strip() for t in text.replace("\n", sep).split(sep) if t.strip()]


def join_tags(tags: list[str], separator: str = ", ") -> str:
    """One caption line from tags."""
    return separator.join(tags)


def strip_weight(tag: str) -> str:
    """``(blue eyes:1.2)`` / ``((blue eyes))`` / ``[blue eyes]`` -> ``blue eyes``; other tags unchanged."""
    m = _WEIGHTED.match(tag)
    return m.group(1) if m else tag


def parse_replacements(spec: str) -> list[tuple[str, str]]:
    """``src1,dst1;src2,dst2`` (kohya's ``--tag_replacement`` syntax; ``\\,`` and ``\\;`` escape) -> pairs.

    Raises:
        ValueError: a pair without exactly one unescaped ``,``.
    """
    text = spec.replace("\\,", "\0c").replace("\\;", "\0s")
    pairs = []
    for item in filter(None, text.split(";")):
        parts = item.split(",")
        if len(parts) != 2:
            raise ValueError(f"'{item}' is not 'source,target'")
        pairs.append(tuple(p.replace("\0c", ",").replace("\0s", ";").strip() for p in parts))
    return pairs


def insert_trigger(tags: list[str], trigger: str, keep_tokens: int = 0, replaces: str | None = None) -> list[str]:
    """Add ``trigger`` once: in place of every whole-word ``replaces`` (inside any tag or sentence), else
    after the first ``keep_tokens`` tags (0 = at the front). A caption that already has the trigger as a tag,
    or after the replacement, is returned unchanged."""
    if replaces:
        pattern = re.compile(rf"(?<!\w){re.escape(replaces)}(?!\w)")
        replaced = [pattern.sub(trigger, t) if trigger not in t else t for t in tags]
        if replaced != tags or any(trigger in t for t in tags):
            return replaced
    if trigger in tags:
        return tags
    return tags[:keep_tokens] + [trigger] + tags[keep_tokens:]


def dedupe(tags: list[str]) -> list[str]:
    """Drop repeated tags, keeping the first occurrence."""
    return list(dict.fromkeys(tags))


# kohya's clean_captions_and_tags.py rules (facts: its patterns and replacement table).
_HAIR_LENGTH = re.compile(r"(long|short|medium) hair")
_HAIR = re.compile(r"[\w\-]+ hair")
_WORD = re.compile(r"[\w\-]+|hair ornament")
_MULTI = [_HAIR_LENGTH, re.compile(r"(bob|hime) cut"), re.compile(r"[\w\-]+ eyes"),
          re.compile(r"[\w\-]+ sleeves|sleeveless"),
          re.compile(r"ponytail|braid|ahoge|twintails|[\w\-]+ bun|single hair bun|single side bun|two side up|"
                     r"two tails|[\w\-]+ braid|sidelocks")]
CAPTION_REPLACEMENTS = (
    ("anime anime", "anime"), ("young ", ""), ("anime girl", "girl"), ("cartoon female", "girl"),
    ("cartoon lady", "girl"), ("cartoon character", "girl"), ("cartoon woman", "girl"),
    ("cartoon women", "girls"), ("cartoon girl", "girl"), ("anime female", "girl"), ("anime lady", "girl"),
    ("anime character", "girl"), ("anime woman", "girl"), ("anime women", "girls"), ("lady", "girl"),
    ("female", "girl"), ("woman", "girl"), ("women", "girls"), ("people", "girls"), ("person", "girl"),
    ("a cartoon figure", "a figure"), ("a cartoon image", "an image"), ("a cartoon picture", "a picture"),
    ("an anime cartoon image", "an image"), ("a cartoon anime drawing", "a drawing"),
    ("a cartoon drawing", "a drawing"), ("girl girl", "girl"),
)


def kohya_clean_tags(tags: list[str]) -> list[str]:
    """kohya's tag cleaning: ``_`` -> space (``^_^`` kept), drop a DeepDanbooru ``rating:`` tail; with
    several people (``girls``/``boys`` anywhere) drop conflicting hair/eye/sleeve/hairstyle tags when more
    than one of a kind appears (one hair length may stay); drop a one-word tag that ends a longer tag
    (``shirt`` beside ``white shirt``)."""
    tags = [t.replace("^_^", "\0").replace("_", " ").replace("\0", "^_^") for t in tags]
    rating = next((i for i, t in enumerate(tags) if i and t.startswith("rating")), None)
    if rating is not None:  # kohya-compat: DeepDanbooru puts "rating:…" last; it and all after it go
        tags = tags[:rating]
    text = ", ".join(tags)
    if "girls" in text or "boys" in text:
        for pattern in _MULTI:
            if sum(bool(pattern.fullmatch(t)) for t in tags) > 1:
                tags = [t for t in tags if not pattern.fullmatch(t)]
        hair = [t for t in tags if _HAIR.fullmatch(t) and not _HAIR_LENGTH.fullmatch(t)]
        if len(hair) > 1:
            tags = [t for t in tags if t not in hair]
    for word in [t for t in tags if _WORD.fullmatch(t)]:
        longer = re.compile(rf"(\w+ )+{re.escape(word)}")
        if any(longer.fullmatch(t) for t in tags):
            tags = [t for t in tags if t != word]
    return tags


def kohya_clean_caption(caption: str) -> str:
    """kohya's sentence-caption cleaning: each replacement of the table, in order, until it no longer applies."""
    for source, target in CAPTION_REPLACEMENTS:
        while source in caption:
            caption = caption.replace(source, target)
    return caption


@dataclass
class TagReport:
    """Tag occurrences (tags counted once per caption) overall and per folder."""

    overall: Counter = field(default_factory=Counter)
    folders: dict[str, Counter] = field(default_factory=dict)
    captions: int = 0

    def add(self, folder: str, tags: list[str]) -> None:
        """Count the distinct tags of one caption under ``folder``."""
        unique = set(tags)
        self.overall.update(unique)
        self.folders.setdefault(folder, Counter()).update(unique)
        self.captions += 1

    def lines(self, order: str = "count", counts: Counter | None = None) -> list[str]:
        """``tag count`` lines: by count (highest first, ties alphabetical) or ``alpha``betical."""
        counts = self.overall if counts is None else counts
        if order == "alpha":
            items = sorted(counts.items())
        else:
            items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [f"{tag} {n}" for tag, n in items]

    def format(self, top: int = 30) -> str:
        """Printable report: the ``top`` tags overall, then per folder."""
        out = [f"tag frequencies ({self.captions} captions, {len(self.overall)} distinct tags):"]
        out += ["  " + line for line in self.lines()[:top]]
        for folder, counts in sorted(self.folders.items()):
            out.append(f"{folder} ({len(counts)} distinct):")
            out += ["  " + line for line in self.lines(counts=counts)[:top]]
        return "\n".join(out)
