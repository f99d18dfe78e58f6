"""The toy picture world: one solid shape in one colour on a plain background, 64×64, with a caption.

The base models learn every colour but :data:`HELD_OUT`; a LoRA teaches it under the trigger word
:data:`TRIGGER`. :func:`colour_share` measures how much of a rendered image shows a palette colour,
which is what the learning tests, the quickstart and the convergence benchmark compare.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np

SIZE = 64  # image side in pixels (8×8 latents)
COLOURS = {"red": (215, 45, 45), "blue": (45, 85, 225), "yellow": (235, 205, 40), "green": (40, 185, 70)}
BACKGROUNDS = {"white": (240, 240, 240), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle")
HELD_OUT = "green"  # the base models never see this colour (nor its word)
TRIGGER = "sks"  # the LoRA's trigger word: it takes the colour's place in the captions
SHARE_DISTANCE = 90.0  # RGB distance within which a pixel counts as a palette colour
_SUPERSAMPLE = 4  # shapes are drawn 4× larger and box-filtered down (anti-aliased edges)


@dataclass(frozen=True)
class Scene:
    """One picture: ``shape`` of ``colour`` centred at (``cx``, ``cy``) with radius ``r`` (pixels of a
    :data:`SIZE` image) on ``background``; colours are RGB tuples."""

    shape: str
    colour: tuple[int, int, int]
    background: tuple[int, int, int]
    cx: float
    cy: float
    r: float


def caption(shape: str, colour_word: str, background: str) -> str:
    """``"a red circle on a white background"``."""
    return f"a {colour_word} {shape} on a {background} background"


def seen_combinations() -> list[tuple[str, str, str]]:
    """``(shape, colour, background)`` of every picture kind the base models learn (no :data:`HELD_OUT`)."""
    colours = [c for c in COLOURS if c != HELD_OUT]
    return list(itertools.product(SHAPES, colours, BACKGROUNDS))


def concept_combinations() -> list[tuple[str, str]]:
    """``(shape, background)`` of the held-out concept's pictures."""
    return list(itertools.product(SHAPES, BACKGROUNDS))


def jittered(rng: random.Random, shape: str, colour: tuple, background: tuple) -> Scene:
    """A scene with a random radius (13–19 px) and centre (±6 px around the middle)."""
    r = rng.uniform(13.0, 19.0)
    return Scene(shape, colour, background, SIZE / 2 + rng.uniform(-6, 6), SIZE / 2 + rng.uniform(-6, 6), r)


def palette_scene(rng: random.Random, jitter: int = 12) -> Scene:
    """A scene anywhere in the frame in palette colours (the held-out one included), each channel moved by up
    to ±``jitter`` levels: the VAE's training world."""
    def vary(rgb: tuple) -> tuple:
        return tuple(min(255, max(0, c + rng.randint(-jitter, jitter))) for c in rgb)

    colour = vary(rng.choice(list(COLOURS.values())))
    background = vary(rng.choice(list(BACKGROUNDS.values())))
    return Scene(rng.choice(SHAPES), colour, background, rng.uniform(14, 50), rng.uniform(14, 50),
                 rng.uniform(8.0, 22.0))


def _outline(scene: Scene, k: int) -> list[tuple[float, float]] | None:
    cx, cy, r = scene.cx * k, scene.cy * k, scene.r * k
    if scene.shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if scene.shape == "triangle":
        return [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    return None


def draw(scene: Scene):
    """Render ``scene`` as a :data:`SIZE`×:data:`SIZE` RGB PIL image with anti-aliased edges."""
    from PIL import Image, ImageDraw

    k = _SUPERSAMPLE
    img = Image.new("RGB", (SIZE * k, SIZE * k), scene.background)
    pen = ImageDraw.Draw(img)
    outline = _outline(scene, k)
    if outline is None:
        cx, cy, r = scene.cx * k, scene.cy * k, scene.r * k
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=scene.colour)
    else:
        pen.polygon(outline, fill=scene.colour)
    return img.resize((SIZE, SIZE), Image.BOX)


def to_tensor(images) -> "torch.Tensor":
    """PIL images -> float32 tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def colour_share(image, colour: str) -> float:
    """Fraction of the pixels of ``image`` (PIL or HxWx3 uint8) nearest to palette colour ``colour`` among
    :data:`COLOURS` and :data:`BACKGROUNDS`, and within :data:`SHARE_DISTANCE` of it."""
    palette = {**COLOURS, **BACKGROUNDS}
    names = list(palette)
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 1, 3)
    refs = np.array([palette[n] for n in names], dtype=np.float32).reshape(1, -1, 3)
    dist = np.linalg.norm(pixels - refs, axis=2)
    nearest = dist.argmin(axis=1)
    index = names.index(colour)
    hit = (nearest == index) & (dist[:, index] < SHARE_DISTANCE)
    return float(hit.mean())
