"""SDXL textual-inversion entry point (``sdxl_train_textual_inversion.py``, kohya-compatible CLI)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Train SDXL textual-inversion embeddings; a ``UserError`` prints one line and exits non-zero.

    Args:
        argv: arguments without the program name (``None``: ``sys.argv[1:]``, and the process exits).
    """
    from sd_train.entry import entry_point

    return entry_point("sdxl_ti", argv)


if __name__ == "__main__":
    main()
