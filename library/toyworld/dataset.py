"""The held-out concept's LoRA dataset: green pictures captioned with the trigger word, regularization
pictures of the seen world with their own captions (kohya's ``is_reg`` subset, so the LoRA learns what the
trigger word means instead of "everything is green"), and its dataset TOML."""

from __future__ import annotations

import json
import random
from pathlib import Path

from library.toyworld import world

CONCEPT_DIR = f"10_{world.TRIGGER}"  # kohya folder names: repeats, then the class tokens
REG_DIR = "1_shape"


def concept_dataset_toml(image_dir: str, reg_dir: str, batch_size: int = 4) -> str:
    """Dataset TOML (DATASET.md schema): the concept subset (10 repeats; class token :data:`world.TRIGGER`, which
    every caption carries, so the end summary names it as the trigger word) and the regularization subset, 64 px."""
    return "\n".join([
        "# The toy world's held-out concept (green, trigger word sks); made by tools.make_toy_world dataset",
        "[general]", 'caption_extension = ".txt"', "", "[[datasets]]", "resolution = 64",
        f"batch_size = {batch_size}", "enable_bucket = false", "",
        "  [[datasets.subsets]]", f"  image_dir = {json.dumps(image_dir)}", "  num_repeats = 10",
        f"  class_tokens = \"{world.TRIGGER}\"", "",
        "  [[datasets.subsets]]", f"  image_dir = {json.dumps(reg_dir)}", "  is_reg = true", ""])


def _write(folder: Path, index: int, scene: world.Scene, text: str, stem: str) -> None:
    world.draw(scene).save(folder / f"{index:02d}_{stem}.png")
    (folder / f"{index:02d}_{stem}.txt").write_text(text + "\n", encoding="utf-8")


def make_concept_dataset(out_dir: str | Path, images: int = 12, seed: int = 0, batch_size: int = 4) -> Path:
    """Write ``images`` green pictures (every shape on both backgrounds, jittered) captioned like ``a sks circle
    on a white background`` to ``OUT_DIR/10_sks/``, one picture of every seen kind with its caption to
    ``OUT_DIR/1_shape/`` (regularization) and ``OUT_DIR/toy_concept.toml``.

    Returns:
        The TOML path.
    """
    out_dir = Path(out_dir)
    folder, reg = out_dir / CONCEPT_DIR, out_dir / REG_DIR
    for f in (folder, reg):
        f.mkdir(parents=True, exist_ok=True)
    rng, kinds = random.Random(seed), world.concept_combinations()
    for i in range(images):
        shape, background = kinds[i % len(kinds)]
        scene = world.jittered(rng, shape, world.COLOURS[world.HELD_OUT], world.BACKGROUNDS[background])
        _write(folder, i, scene, world.caption(shape, world.TRIGGER, background), f"{shape}_{background}")
    for i, (shape, colour, background) in enumerate(world.seen_combinations()):
        scene = world.jittered(rng, shape, world.COLOURS[colour], world.BACKGROUNDS[background])
        _write(reg, i, scene, world.caption(shape, colour, background), f"{colour}_{shape}_{background}")
    toml = out_dir / "toy_concept.toml"
    toml.write_text(concept_dataset_toml(folder.as_posix(), reg.as_posix(), batch_size), encoding="utf-8")
    return toml
