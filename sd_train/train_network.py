"""SD1.x / SD2.x LoRA training entry point (``train_network.py``, kohya-compatible CLI)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Train an SD1/SD2 network; a ``UserError`` prints one line and exits non-zero.

    Args:
        argv: arguments without the program name (``None``: ``sys.argv[1:]``, and the process exits).
    """
    from sd_train.entry import entry_point

    return entry_point("sd", argv)


if __name__ == "__main__":
    main()
