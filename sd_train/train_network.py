"""SD1.x / SD2.x LoRA training entry point (``train_network.py``, kohya-compatible CLI)."""

from __future__ import annotations

import sys


def _main(argv: list[str]) -> int:
    from sd_train.families.sd import SdFamily
    from sd_train.trainer import run

    return run(SdFamily, argv, "sd")


def main(argv: list[str] | None = None) -> int:
    """Train an SD1/SD2 network; ``UserError`` prints one line and exits non-zero.

    Args:
        argv: arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status when called in-process with ``argv``; exits the process otherwise.
    """
    from library.errors import run_cli

    code = run_cli(_main, argv)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
