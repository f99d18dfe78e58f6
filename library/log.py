"""Logging setup; called by entry points only, never at import time."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str | None = None, log_file: str | None = None, simple: bool = False) -> None:
    """Configure the root logger once for a command-line run.

    Args:
        level: DEBUG/INFO/WARNING/ERROR/CRITICAL (default INFO).
        log_file: write to this file instead of stderr.
        simple: plain ``message`` format without time and logger name.
    """
    fmt = "%(message)s" if simple else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "INFO").upper())
