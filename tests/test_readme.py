"""The README stays true: its test command is CI's, and its flag table matches the options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flag_table_is_current():
    result = subprocess.run([sys.executable, "scripts/flag_table.py", "--check", "README.md"], cwd=ROOT)
    assert result.returncode == 0, "README flag table is stale: run python scripts/flag_table.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "bash scripts/setup_env.sh && .venv/bin/python -m pytest -q -n 2 tests"
    assert command in readme and command in ci
