"""Fixtures for the network tests: cached models and plugin helpers."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: helpers and the fake plugin live here

import netkit  # noqa: E402


@functools.lru_cache(maxsize=None)
def _built(kind: str) -> netkit.ModelCase:
    return netkit.CASES[kind]()


@pytest.fixture
def make_case():
    """``make_case(kind)`` -> a fresh deep copy of the cached ``toy``/``sdxl``/``sd15`` ModelCase."""
    return lambda kind: copy.deepcopy(_built(kind))
