"""Edit the caption files of a dataset in one pass: ``edit_captions``.

Adds a trigger word (at the front, after ``--keep_tokens`` tags, or in place of a word), removes or
replaces tags (exact or regex), dedupes, sorts, strips A1111 weights, lower-cases, applies kohya's
``clean_captions_and_tags.py`` rules as a preset, and reports tag frequencies (overall and per folder)
with an optional tag-occurrence file (``tag count`` per line). ``--dry_run`` prints the changes of the
first captions and writes nothing. Every caption file is rewritten atomically.

Example: ``edit_captions train --caption_extension .txt --trigger sks --remove_tags "1girl,solo" --report``
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from library.errors import UserError, run_cli
from library.prep import files
from library.prep.edits import CaptionEdits, diff_lines
from library.prep.tags import TagReport, parse_replacements, split_tags


def setup_parser() -> argparse.ArgumentParser:
    """Flags of ``edit_captions``."""
    p = argparse.ArgumentParser(prog="edit_captions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", help="folder with the images and their caption files")
    p.add_argument("--caption_extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--caption_separator", default=",", help="tag separator when reading (default ',')")
    p.add_argument("--output_separator", default=", ", help="tag separator when writing (default ', ')")
    p.add_argument("--recursive", action="store_true", help="also edit the captions in subfolders")
    p.add_argument("--trigger", default=None, help="trigger word or phrase to add once to every caption")
    p.add_argument("--keep_tokens", type=int, default=0,
                   help="put the trigger after this many leading tags; --sort keeps them in place too")
    p.add_argument("--trigger_replaces", default=None,
                   help="put the trigger in place of this whole word where a caption has it (else add it)")
    p.add_argument("--remove_tags", default="", help="comma-separated tags to remove (exact match)")
    p.add_argument("--remove_regex", action="append", default=[],
                   help="remove tags this regular expression matches in full (repeatable)")
    p.add_argument("--replace_tags", default=None,
                   help="'source,target;source2,target2' exact tag replacements (escape , and ; with \\)")
    p.add_argument("--replace_regex", nargs=2, action="append", default=[], metavar=("PATTERN", "REPLACEMENT"),
                   help="re.sub on every tag (repeatable)")
    p.add_argument("--dedupe", action="store_true", help="drop repeated tags")
    p.add_argument("--sort", action="store_true", help="sort tags alphabetically after --keep_tokens")
    p.add_argument("--strip_weights", action="store_true", help="(tag:1.2), ((tag)), [tag] -> tag")
    p.add_argument("--lowercase", action="store_true", help="lower-case every tag")
    p.add_argument("--preset", choices=["kohya_tags", "kohya_captions"], default=None,
                   help="kohya clean_captions_and_tags rules: kohya_tags (tag files) or kohya_captions (sentences)")
    p.add_argument("--report", action="store_true", help="print tag frequencies, overall and per folder")
    p.add_argument("--tag_occurrence", default=None, help="write 'tag count' lines to this .txt file")
    p.add_argument("--occurrence_order", choices=["count", "alpha"], default="count",
                   help="order of --tag_occurrence lines: by count (default) or alphabetical")
    p.add_argument("--dry_run", nargs="?", type=int, const=10, default=None, metavar="N",
                   help="print the changes of the first N changed captions (default 10) and write nothing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _regex(pattern: str, flag: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UserError(f"{flag} {pattern!r}: not a valid regular expression ({err})") from None


def build_edits(args: argparse.Namespace) -> CaptionEdits:
    """The :class:`CaptionEdits` of the flags (bad regexes and replacement pairs are one-line errors)."""
    try:
        pairs = parse_replacements(args.replace_tags) if args.replace_tags else []
    except ValueError as err:
        raise UserError(f"--replace_tags: {err}; use 'source,target;source2,target2'") from None
    return CaptionEdits(
        separator=args.caption_separator, join_separator=args.output_separator,
        strip_weights=args.strip_weights, lowercase=args.lowercase, preset=args.preset, replace=pairs,
        replace_regex=[(_regex(p, "--replace_regex"), r) for p, r in args.replace_regex],
        remove=set(split_tags(args.remove_tags)), remove_regex=[_regex(p, "--remove_regex") for p in args.remove_regex],
        dedupe=args.dedupe, sort=args.sort, keep_tokens=args.keep_tokens, trigger=args.trigger,
        trigger_replaces=args.trigger_replaces)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read this caption file ({err}); fix or delete it") from None


def edit_folder(args: argparse.Namespace) -> tuple[int, int, TagReport]:
    """Edit (or with ``--dry_run`` preview) every caption; returns ``(changed, missing, report)``."""
    edits = build_edits(args)
    ext = files.normalize_extension(args.caption_extension)
    root = Path(args.train_data_dir)
    images = files.list_images(root, args.recursive)
    captions = [(files.caption_path(img, ext), img) for img in images]
    missing = sum(not c.is_file() for c, _ in captions)
    changes = []
    for cap, img in captions:
        if cap.is_file():
            before = _read(cap)
            changes.append((cap, img, before, edits.apply(before) if edits.changes_text else before))
    report = TagReport()
    shown = 0
    for cap, img, before, after in changes:
        report.add(str(img.parent.relative_to(root)), split_tags(after, edits.join_separator))
        if before == after:
            continue
        if args.dry_run is not None:
            if shown < args.dry_run:
                print("\n".join(diff_lines(str(cap), before, after)))
            shown += 1
        else:
            files.write_text(cap, after + "\n")
    return sum(b != a for _, _, b, a in changes), missing, report


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    if args.keep_tokens < 0:
        raise UserError(f"--keep_tokens {args.keep_tokens}: must be 0 or more")
    if args.tag_occurrence and args.dry_run is None:
        files.check_writable(Path(args.tag_occurrence).resolve().parent, "folder of --tag_occurrence")
    changed, missing, report = edit_folder(args)
    verb = "would change" if args.dry_run is not None else "changed"
    print(f"{verb} {changed} of {report.captions} caption files"
          + (f"; {missing} images have no {args.caption_extension} caption" if missing else ""))
    if args.report:
        print(report.format())
    if args.tag_occurrence and args.dry_run is None:
        files.write_text(Path(args.tag_occurrence), "\n".join(report.lines(args.occurrence_order)) + "\n")
        print(f"tag occurrences written to {args.tag_occurrence}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``edit_captions``: 0, or one error line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
