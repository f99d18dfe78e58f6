"""Fixtures for the dataset tests: tiny images and folders written on the fly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image


def _make_image(path, size=(64, 48), mode="RGB", fmt=None, seed=0):
    """Write a random image of ``size = (w, h)`` in ``mode`` to ``path``; return the path."""
    rng = np.random.default_rng(seed)
    w, h = size
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    if mode in ("RGB", "RGBA", "CMYK") and w * h > 200_000:  # large: cheap gradient
        grad = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
        img = Image.fromarray(np.broadcast_to(grad, (h, w, len(mode))).copy(), mode)
    elif mode in ("RGB", "RGBA", "CMYK"):
        arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        img = Image.fromarray(arr, mode)
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "LA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8)[..., 0], "L")
        img = Image.merge("LA", (img, img))
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        raise ValueError(mode)
    img.save(str(path), format=fmt)
    return str(path)


@pytest.fixture
def make_image():
    """``make_image(path, size=(w, h), mode="RGB", fmt=None, seed=0) -> str``."""
    return _make_image


@pytest.fixture
def make_folder(tmp_path):
    """``make_folder(rel, sizes, captions=None, ext=".png") -> dir``: images img00.. in tmp."""

    def make(rel, sizes, captions=None, ext=".png", caption_ext=".txt"):
        folder = tmp_path / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            _make_image(folder / f"img{i:02d}{ext}", size, seed=i)
            if captions and i < len(captions) and captions[i] is not None:
                (folder / f"img{i:02d}{caption_ext}").write_text(captions[i], encoding="utf-8")
        return str(folder)

    return make


@pytest.fixture
def write_toml(tmp_path):
    """``write_toml(text, name="data.toml") -> path``."""

    def write(text, name="data.toml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def example_folders(tmp_path, make_folder):
    """The image folders and metadata the ``dataset_configs/`` examples name, under ``tmp_path`` (their
    relative paths resolve there)."""
    make_folder("data/sks_dog", [(512, 512), (640, 480), (480, 640)], captions=["sks dog, grass"])
    make_folder("data/dog_reg", [(512, 512)] * 4)
    make_folder("data/portraits", [(832, 1216)] * 10, captions=["woman, smiling"] * 10)
    make_folder("data/landscapes", [(1216, 832), (1344, 768)])
    make_folder("data/anime", [(768, 768), (1024, 512)])
    (tmp_path / "data" / "anime_meta.json").write_text(json.dumps({
        "img00.png": {"caption": "a girl", "tags": "1girl, solo"},
        "img01.png": {"tags": "landscape ||| sky, clouds"}}))
    make_folder("data/sks_cat", [(512, 512), (1024, 768)])
    return tmp_path
