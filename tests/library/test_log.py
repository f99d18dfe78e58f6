"""setup_logging survives sys.stderr being swapped (in-process runs, pytest capture)."""

from __future__ import annotations

import io
import logging
import sys

from library.log import setup_logging


def test_logs_go_to_the_current_stderr(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO", simple=True)
    first.close()  # what pytest does to a finished test's capture stream
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("x").info("hello")
    assert second.getvalue() == "hello\n"
    logging.getLogger().handlers[:] = []
