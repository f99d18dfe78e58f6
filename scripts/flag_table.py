"""Print the README's kohya flag compatibility table, generated from the option declarations.

Usage: ``python scripts/flag_table.py`` (prints Markdown); ``--check README.md`` exits 1 when the
README's table between the markers differs from the generated one.
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN = "<!-- flag-table:begin -->"
END = "<!-- flag-table:end -->"


def flag_table() -> str:
    """Markdown table: flag, type, default, support status and the one help text."""
    from sd_train.compat import unsupported_table
    from sd_train.options import option_fields

    status = {row.flag: row.action for row in unsupported_table()}
    words = {"reject": "refused when set", "ignore": "accepted, ignored (warning)", "info": "mapped (note)"}
    lines = ["| Flag | Type | Default | sd-train | Meaning |", "|---|---|---|---|---|"]
    for _, f in option_fields():
        m = f.metadata
        kind = "flag" if m["flag"] else getattr(m["type"], "__name__", "str") + ("*" if m["nargs"] else "")
        star = "★ " if m["common"] else ""
        note = "sd-train addition" if m["ours"] else words.get(status.get(f.name, ""), "supported")
        if m["sdxl_only"]:
            note += ", SDXL only"
        default = "" if f.default in (None, False, "") else f"`{f.default}`"
        help_text = m["help"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {star}`--{f.name}` | {kind} | {default} | {note} | {help_text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    table = flag_table()
    if argv[:1] == ["--check"]:
        text = Path(argv[1]).read_text(encoding="utf-8")
        current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n" if BEGIN in text else ""
        return 0 if current == table else 1
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
