"""The caption chores of ``edit_captions`` as one ordered, pure edit of a caption's text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from library.prep import tags as tg


@dataclass
class CaptionEdits:
    """Edits applied to every caption, in this order (each step only when set):

    1. ``strip_weights``: ``(tag:1.2)`` -> ``tag``; 2. ``lowercase``;
    3. ``preset``: ``kohya_tags`` (clean_captions_and_tags tag rules) or ``kohya_captions`` (its sentence
       replacements); 4. ``replace``: exact ``(source, target)`` tag pairs, then ``replace_regex``
       ``(pattern, replacement)`` on each tag (``re.sub``); 5. ``remove``: exact tags, then tags that
       ``remove_regex`` patterns match in full; 6. ``dedupe``; 7. ``sort``: alphabetical after the first
       ``keep_tokens`` tags; 8. ``trigger``: see :func:`library.prep.tags.insert_trigger`.

    Running the same edits twice gives the same text as running them once.
    """

    separator: str = ","
    join_separator: str = ", "
    strip_weights: bool = False
    lowercase: bool = False
    preset: str | None = None
    replace: list[tuple[str, str]] = field(default_factory=list)
    replace_regex: list[tuple[re.Pattern, str]] = field(default_factory=list)
    remove: set[str] = field(default_factory=set)
    remove_regex: list[re.Pattern] = field(default_factory=list)
    dedupe: bool = False
    sort: bool = False
    keep_tokens: int = 0
    trigger: str | None = None
    trigger_replaces: str | None = None

    @property
    def changes_text(self) -> bool:
        """False when no edit is set (a report-only run must not rewrite files to normalize separators)."""
        return any((self.strip_weights, self.lowercase, self.preset, self.replace, self.replace_regex, self.remove,
                    self.remove_regex, self.dedupe, self.sort, self.trigger))

    def apply(self, text: str) -> str:
        """The edited caption text (one line)."""
        tags = tg.split_tags(text, self.separator)
        if self.strip_weights:
            tags = [tg.strip_weight(t) for t in tags]
        if self.lowercase:
            tags = [t.lower() for t in tags]
        if self.preset == "kohya_tags":
            tags = tg.kohya_clean_tags(tags)
        elif self.preset == "kohya_captions":
            tags = [tg.kohya_clean_caption(t) for t in tags]
        pairs = dict(self.replace)
        tags = [pairs.get(t, t) for t in tags]
        for pattern, repl in self.replace_regex:
            tags = [pattern.sub(repl, t).strip() for t in tags]
        tags = [t for t in tags if t and t not in self.remove and not any(p.fullmatch(t) for p in self.remove_regex)]
        if self.dedupe:
            tags = tg.dedupe(tags)
        if self.sort:
            tags = tags[:self.keep_tokens] + sorted(tags[self.keep_tokens:])
        if self.trigger:
            tags = tg.insert_trigger(tags, self.trigger, self.keep_tokens, self.trigger_replaces)
        return tg.join_tags(tags, self.join_separator)


def diff_lines(name: str, before: str, after: str) -> list[str]:
    """A two-line diff of one caption (``- old`` / ``+ new``) under its file name."""
    return [f"{name}:", f"- {before}", f"+ {after}"]
