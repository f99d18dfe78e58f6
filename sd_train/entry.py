"""Shared body of the training entry points: parse, train, one-line errors, exit status."""

from __future__ import annotations

import sys


def entry_point(entry: str, argv: list[str] | None) -> int:
    """Run ``train_network.py`` (``entry="sd"``), ``sdxl_train_network.py`` (``"sdxl"``) or a
    textual-inversion script (``"sd_ti"``, ``"sdxl_ti"``).

    Args:
        entry: a key of ``sd_train.families.ENTRIES``.
        argv: arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status when called in-process with ``argv``; exits the process otherwise.
    """
    from library.errors import run_cli

    def _main(args: list[str]) -> int:
        from sd_train.families import family_class
        from sd_train.trainer import run

        return run(family_class(entry), args, entry)

    code = run_cli(_main, argv)
    if argv is None:
        sys.exit(code)
    return code
