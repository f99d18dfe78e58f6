"""Tag images with a WD14-style ONNX tagger and write caption files: ``tag_images_by_wd14_tagger``.

kohya's ``finetune/tag_images_by_wd14_tagger.py`` flags. The model is ``model.onnx`` +
``selected_tags.csv`` from ``--model_dir`` (that folder, or kohya's ``{model_dir}/{owner}_{name}``),
downloaded from the hub repository ``--repo_id`` when missing. It always runs with onnxruntime
(``--onnx`` is accepted). Existing caption files need ``--append_tags`` (add new tags) or ``--overwrite``;
images are checked before the model loads and every caption is written atomically.

Example: ``tag_images_by_wd14_tagger train --repo_id SmilingWolf/wd-vit-tagger-v3 --thresh 0.35``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from library.errors import UserError, run_cli
from library.prep import files, wd14
from library.prep.tags import parse_replacements


def setup_parser() -> argparse.ArgumentParser:
    """kohya's tagger flags plus ``--overwrite``."""
    p = argparse.ArgumentParser(prog="tag_images_by_wd14_tagger", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_data_dir", help="folder with the images to tag")
    p.add_argument("--repo_id", default=wd14.DEFAULT_REPO, help="hub repository of the tagger (owner/name)")
    p.add_argument("--model_dir", default="wd14_tagger_model",
                   help="folder with model.onnx + selected_tags.csv, or the parent of {owner}_{name} folders")
    p.add_argument("--force_download", action="store_true", help="download the model files again")
    p.add_argument("--batch_size", type=int, default=1, help="images per inference call")
    p.add_argument("--max_data_loader_n_workers", type=int, default=None, help="threads that load images")
    p.add_argument("--output_path", default=None,
                   help="write one .json (or .jsonl) metadata file instead of caption files")
    p.add_argument("--caption_extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--caption_extention", default=None, help="old misspelling of --caption_extension")  # kohya-compat
    p.add_argument("--thresh", type=float, default=0.35, help="confidence threshold of a tag")
    p.add_argument("--general_threshold", type=float, default=None, help="general tags (default --thresh)")
    p.add_argument("--character_threshold", type=float, default=None,
                   help="character tags (default --thresh; above 1 disables them)")
    p.add_argument("--recursive", action="store_true", help="also tag images in subfolders")
    p.add_argument("--remove_underscore", action="store_true", help="write spaces instead of underscores")
    p.add_argument("--undesired_tags", default="", help="comma-separated tags never written")
    p.add_argument("--frequency_tags", action="store_true", help="print how often each tag was found")
    p.add_argument("--onnx", action="store_true", help="accepted for kohya command lines (always ONNX)")
    p.add_argument("--append_tags", action="store_true", help="add new tags to existing caption files")
    p.add_argument("--use_rating_tags", action="store_true", help="put the rating tag first")
    p.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="put the rating tag last")
    p.add_argument("--character_tags_first", action="store_true", help="put character tags before general tags")
    p.add_argument("--character_tag_expand", action="store_true",
                   help="write character tags name_(series) as 'name, series'")
    p.add_argument("--always_first_tags", default=None, help="comma-separated tags moved to the front when found")
    p.add_argument("--caption_separator", default=", ", help="separator between written tags (default ', ')")
    p.add_argument("--tag_replacement", default=None,
                   help="'source,target;source2,target2' tag replacements (escape , and ; with \\)")
    for name in ("meta", "model", "copyright", "artist"):  # kohya-compat: tag_mapping.json taggers only
        p.add_argument(f"--{name}_threshold", type=float, default=None, help="accepted; no effect on WD14 models")
    for name in ("use_quality_tags", "use_quality_tags_as_last_tag"):  # kohya-compat: as above
        p.add_argument(f"--{name}", action="store_true", help="accepted; no effect on WD14 models")
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files (sd-train)")
    p.add_argument("--debug", action="store_true", help="print the tags of each image; show tracebacks")
    return p


def tag_options(args: argparse.Namespace) -> wd14.TagOptions:
    """Thresholds and ordering flags as :class:`library.prep.wd14.TagOptions`."""
    sep = args.caption_separator.strip() or ","
    return wd14.TagOptions(
        general_threshold=args.thresh if args.general_threshold is None else args.general_threshold,
        character_threshold=args.thresh if args.character_threshold is None else args.character_threshold,
        undesired={t.strip() for t in args.undesired_tags.split(sep) if t.strip()},
        always_first=[t.strip() for t in (args.always_first_tags or "").split(sep) if t.strip()],
        character_tags_first=args.character_tags_first, use_rating_tags=args.use_rating_tags,
        use_rating_tags_as_last_tag=args.use_rating_tags_as_last_tag)


def _check_inputs(args: argparse.Namespace, images: list[Path], ext: str) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 1")
    if not images:
        raise UserError(f"{args.train_data_dir}: no images found (use --recursive for subfolders)")
    files.check_images(images)
    if args.output_path:
        files.check_writable(Path(args.output_path).resolve().parent, "folder of --output_path")
        return
    if not (args.append_tags or args.overwrite):
        files.existing_outputs([files.caption_path(p, ext) for p in images],
                               "pass --append_tags to add the new tags to them or --overwrite to replace them")
    for folder in sorted({p.parent for p in images}):
        files.check_writable(folder, "image folder")


def _batches(images: list[Path], size: int, tagger: wd14.OnnxTagger, workers: int | None):
    load = lambda p: wd14.preprocess(p, tagger.size)  # noqa: E731
    with ThreadPoolExecutor(max_workers=workers or 1) as pool:
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            yield chunk, np.stack(list(pool.map(load, chunk)))


def tag_images(args: argparse.Namespace) -> Counter:
    """Tag every image (caption files, or the ``--output_path`` metadata); returns the tag frequencies."""
    ext = files.normalize_extension(args.caption_extention or args.caption_extension)
    images = files.list_images(args.train_data_dir, args.recursive)
    _check_inputs(args, images, ext)
    try:
        pairs = parse_replacements(args.tag_replacement) if args.tag_replacement else []
    except ValueError as err:
        raise UserError(f"--tag_replacement: {err}; use 'source,target;source2,target2'") from None
    folder = wd14.model_folder(args.repo_id, args.model_dir, args.force_download)
    labels = wd14.rename_labels(wd14.load_labels(folder / wd14.TAGS_FILE), args.remove_underscore,
                                args.character_tag_expand, pairs, args.caption_separator)
    tagger = wd14.OnnxTagger(folder / wd14.MODEL_FILE)
    batch = args.batch_size
    if tagger.fixed_batch and tagger.fixed_batch != batch:
        print(f"the model takes batches of {tagger.fixed_batch}; using --batch_size {tagger.fixed_batch}")
        batch = tagger.fixed_batch
    opts, freq, metadata = tag_options(args), Counter(), {}
    for paths, pixels in _batches(images, batch, tagger, args.max_data_loader_n_workers):
        for path, probs in zip(paths, tagger(pixels)):
            tags, found = wd14.select_tags(probs, labels, opts)
            freq.update(found)
            cap = files.caption_path(path, ext)
            if args.append_tags and cap.is_file():
                tags = wd14.merge_existing(cap.read_text(encoding="utf-8"), tags, args.caption_separator)
            text = args.caption_separator.join(tags)
            if args.debug:
                print(f"{path}: {text}")
            if args.output_path:
                metadata[str(path)] = text
            else:
                files.write_text(cap, text + "\n")
    if args.output_path:
        _write_metadata(Path(args.output_path), metadata, files.check_images(images))
    return freq


def _write_metadata(path: Path, captions: dict[str, str], sizes: dict) -> None:
    """kohya's ``--output_path``: ``{image: {"tags", "image_size"}}`` JSON, or JSON lines."""
    if path.suffix == ".jsonl":
        text = "".join(json.dumps({"image_path": k, "caption": v, "image_size": list(sizes[Path(k)])}) + "\n"
                       for k, v in captions.items())
    else:
        text = json.dumps({k: {"tags": v, "image_size": list(sizes[Path(k)])} for k, v in captions.items()},
                          ensure_ascii=False, indent=4)
    files.write_text(path, text)


def _main(argv: list[str]) -> int:
    args = setup_parser().parse_args(argv)
    freq = tag_images(args)
    if args.frequency_tags:
        print("Tag frequencies:")
        for tag, count in sorted(freq.items(), key=lambda kv: kv[1], reverse=True):
            print(f"{tag}: {count}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``tag_images_by_wd14_tagger``: 0, or one error line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
