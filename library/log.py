"""Logging setup; called by entry points only, never at import time."""

from __future__ import annotations

import logging
import sys


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so in-process runs (tests, notebooks) that
    swap ``sys.stderr`` never log into a closed stream."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: str | None = None, log_file: str | None = None, simple: bool = False) -> None:
    """Configure the root logger once for a command-line run.

    Args:
        level: DEBUG/INFO/WARNING/ERROR/CRITICAL (default INFO).
        log_file: write to this file instead of stderr.
        simple: plain ``message`` format without time and logger name.
    """
    fmt = "%(message)s" if simple else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "INFO").upper())
