"""Shared test setup: offline, seeded, CPU-only."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores and pytest-xdist workers: one intra-op thread per worker is far faster than oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def plan_numbers():
    """``plan_numbers(stdout) -> (optimizer steps per epoch, epochs, optimizer steps)`` of a printed plan."""
    import re

    def parse(text: str) -> tuple[int, int, int]:
        m = re.search(r"→ (\d+) optimizer steps per epoch; (\d+) epochs, (\d+) optimizer steps in all", text)
        assert m, text
        return int(m.group(1)), int(m.group(2)), int(m.group(3))

    return parse


@pytest.fixture
def summary_rows():
    """``summary_rows(stdout) -> {path: rest of the line}`` of the end summary's ``wrote`` rows."""

    def parse(text: str) -> dict[str, str]:
        rows, inside = {}, False
        for line in text[text.index("summary:"):].splitlines()[1:]:
            label, value = line[:14].strip(), line[14:]
            inside = label == "wrote" or (inside and not label)
            if inside:
                path, _, rest = value.partition("  ")
                rows[path] = rest
        return rows

    return parse
