"""Write a small DreamBooth-style sample dataset (generated PNGs + captions) and its dataset TOML.

Images are drawn with Pillow (gradients with a shape on top) in a few aspect ratios, so bucketing
has something to do. Captions contain the trigger word ``sks``.

Usage: ``python -m tools.make_sample_dataset OUT_DIR [--config dataset_configs/sample_sdxl.toml]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from library.errors import run_cli

SUBSET_DIR = "10_sks shape"  # kohya folder name: 10 repeats, class tokens "sks shape"
# (width, height, shape, (r, g, b) shape colour, gradient direction)
_IMAGES = (
    (64, 64, "circle", (220, 40, 40), "horizontal"),
    (96, 64, "square", (40, 200, 60), "vertical"),
    (64, 96, "triangle", (40, 60, 220), "horizontal"),
    (128, 80, "circle", (240, 200, 30), "vertical"),
    (64, 64, "square", (200, 40, 200), "vertical"),
    (80, 128, "circle", (30, 200, 200), "horizontal"),
    (96, 96, "triangle", (250, 130, 20), "vertical"),
    (128, 64, "square", (120, 120, 250), "horizontal"),
)
_COLOR_NAMES = {(220, 40, 40): "red", (40, 200, 60): "green", (40, 60, 220): "blue", (240, 200, 30): "yellow",
                (200, 40, 200): "magenta", (30, 200, 200): "cyan", (250, 130, 20): "orange",
                (120, 120, 250): "lavender"}


def _draw(width: int, height: int, shape: str, color: tuple[int, int, int], direction: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    px = img.load()
    for y in range(height):
        for x in range(width):
            t = x / (width - 1) if direction == "horizontal" else y / (height - 1)
            px[x, y] = (int(30 + 180 * t), int(30 + 100 * (1 - t)), int(90 + 120 * t))
    draw = ImageDraw.Draw(img)
    s = min(width, height)
    box = ((width - s) // 2 + s // 5, (height - s) // 2 + s // 5, (width + s) // 2 - s // 5, (height + s) // 2 - s // 5)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((box[0] + box[2]) // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=color)
    return img


def dataset_toml(image_dir: str) -> str:
    """The kohya-schema dataset TOML for the sample subset at ``image_dir``."""
    return "\n".join([
        "# Tiny generated dataset for smoke tests (DATASET.md schema). Create the images with",
        f"#   python -m tools.make_sample_dataset {json.dumps(str(Path(image_dir).parent))} --config THIS_FILE",
        "[general]",
        'caption_extension = ".txt"',
        "",
        "[[datasets]]",
        "resolution = 64",
        "batch_size = 2",
        "enable_bucket = true",
        "min_bucket_reso = 32",
        "max_bucket_reso = 128",
        "bucket_reso_steps = 32",
        "",
        "  [[datasets.subsets]]",
        f"  image_dir = {json.dumps(image_dir)}",
        '  class_tokens = "sks shape"',
        "  num_repeats = 10",
        "",
    ])


def make_sample_dataset(out_dir: str | Path, toml_path: str | Path | None = None) -> Path:
    """Write 8 PNGs with ``.txt`` captions into ``OUT_DIR/10_sks shape/`` and a dataset TOML.

    Args:
        out_dir: Dataset root (created).
        toml_path: Where to write the TOML; default ``OUT_DIR/sample_dataset.toml``. Its
            ``image_dir`` is ``OUT_DIR/10_sks shape`` exactly as ``out_dir`` was given.

    Returns:
        The TOML path.
    """
    out_dir = Path(out_dir)
    subset = out_dir / SUBSET_DIR
    subset.mkdir(parents=True, exist_ok=True)
    for i, (w, h, shape, color, direction) in enumerate(_IMAGES):
        _draw(w, h, shape, color, direction).save(subset / f"img_{i:02d}.png")
        caption = f"sks shape, a {_COLOR_NAMES[color]} {shape} on a {direction} gradient, {w}x{h}"
        (subset / f"img_{i:02d}.txt").write_text(caption + "\n", encoding="utf-8")
    toml_path = Path(toml_path) if toml_path else out_dir / "sample_dataset.toml"
    toml_path.parent.mkdir(parents=True, exist_ok=True)
    toml_path.write_text(dataset_toml(subset.as_posix()), encoding="utf-8")
    return toml_path


def setup_parser() -> argparse.ArgumentParser:
    """Command-line options of make_sample_dataset."""
    parser = argparse.ArgumentParser(description="Write a small generated image dataset and its dataset TOML.")
    parser.add_argument("out_dir", help="dataset root; images go to OUT_DIR/10_sks shape/")
    parser.add_argument("--config", default=None, help="where to write the dataset TOML (default OUT_DIR/sample_dataset.toml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    toml_path = make_sample_dataset(args.out_dir, args.config)
    print(f"wrote {len(_IMAGES)} images to {Path(args.out_dir) / SUBSET_DIR} and {toml_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``make_sample_dataset OUT_DIR [--config TOML]``."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
