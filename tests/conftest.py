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
