"""WD14-style image taggers (SmilingWolf's ``model.onnx`` + ``selected_tags.csv``) through onnxruntime.

Model layout (SmilingWolf's v2 and v3 taggers): one NHWC float32 input ``(N, S, S, 3)`` holding BGR
values 0-255, the first output ``(N, tags)`` holding probabilities (the sigmoid is in the graph).
``selected_tags.csv`` has the columns ``tag_id,name,category,count``, one row per output in output
order; category 9 = rating, 0 = general, 4 = character. Images are composited on white, padded to a
centred white square, resized to ``S`` (area when shrinking, Lanczos when enlarging, as kohya) and
flipped to BGR. Tag selection follows kohya's ``tag_images_by_wd14_tagger.py`` (see :func:`select_tags`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from library.dataset.images import load_image, resize
from library.errors import UserError, first_line

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
DEFAULT_REPO = "SmilingWolf/wd-v1-4-convnext-tagger-v2"  # kohya-compat: kohya's default tagger
RATING, GENERAL, CHARACTER = 9, 0, 4


def model_folder(repo_id: str, model_dir: str, force_download: bool = False) -> Path:
    """The folder holding ``model.onnx`` and ``selected_tags.csv``, downloading them when missing.

    ``model_dir`` itself when it holds both files; else kohya's place ``{model_dir}/{owner}_{name}``,
    filled from the hub repository ``repo_id`` (with ``huggingface_hub``) when a file is missing or
    ``force_download`` is set.

    Raises:
        UserError: ``repo_id`` is not ``owner/name``, or the download fails (says which files go where).
    """
    direct = Path(model_dir)
    if not force_download and all((direct / f).is_file() for f in (MODEL_FILE, TAGS_FILE)):
        return direct
    if repo_id.count("/") != 1:
        raise UserError(f"--repo_id {repo_id}: only 'owner/name' tagger repositories with {MODEL_FILE} and "
                        f"{TAGS_FILE} are supported (kohya's sub-folder layout with tag_mapping.json is not)")
    folder = direct / repo_id.replace("/", "_")
    missing = [f for f in (MODEL_FILE, TAGS_FILE) if force_download or not (folder / f).is_file()]
    if missing:
        from huggingface_hub import hf_hub_download

        try:
            for name in missing:
                hf_hub_download(repo_id, name, local_dir=str(folder), force_download=force_download)
        except Exception as exc:  # offline, unknown repository, network: all end the same way
            raise UserError(f"cannot download {', '.join(missing)} of {repo_id} ({first_line(exc)}); download "
                            f"{MODEL_FILE} and {TAGS_FILE} from the hub repository {repo_id} into {folder}") from None
    return folder


def load_labels(path: Path) -> list[tuple[str, int]]:
    """``[(name, category)]`` of ``selected_tags.csv`` in row (= model output) order.

    Raises:
        UserError: missing file, or not the ``tag_id,name,category`` layout.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if rows[0][:3] != ["tag_id", "name", "category"]:
            raise ValueError(f"header {rows[0][:4]}")
        return [(row[1], int(row[2])) for row in rows[1:] if row]
    except (OSError, IndexError, ValueError) as exc:
        raise UserError(f"{path}: not a WD14 {TAGS_FILE} (tag_id,name,category,count): {first_line(exc)}") from None


class OnnxTagger:
    """An onnxruntime session of a WD14 model: input name and size, fixed batch size if any.

    Raises:
        UserError: the file is not an ONNX model, or its input is not ``(N, S, S, 3)``.
    """

    def __init__(self, path: Path):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path}: cannot load this ONNX model ({first_line(exc)}); download it again "
                            "(--force_download)") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[3] != 3:
            raise UserError(f"{path}: input {inp.name} has shape {inp.shape}; a WD14 tagger takes (N, S, S, 3) BGR")
        self.input_name = inp.name
        self.size = inp.shape[1] if isinstance(inp.shape[1], int) else 448  # kohya-compat: 448 when dynamic
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` float32 BGR -> ``(N, tags)`` probabilities."""
        return self.session.run(None, {self.input_name: batch})[0]


def preprocess(path: Path, size: int) -> np.ndarray:
    """One image as the model expects: ``(size, size, 3)`` float32 BGR 0-255 on a white square."""
    rgba = load_image(str(path), keep_alpha=True).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.full((side, side, 3), 255, np.uint8)
    square[top:top + h, left:left + w] = rgb
    return resize(square, (size, size), None)[..., ::-1].astype(np.float32)


@dataclass
class TagOptions:
    """kohya's tag selection flags (thresholds are ``>=``; names are compared after their rewrites)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.35
    undesired: set[str] = field(default_factory=set)
    always_first: list[str] = field(default_factory=list)
    character_tags_first: bool = False
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False


def rename_labels(labels: list[tuple[str, int]], remove_underscore: bool, expand_characters: bool,
                  replacements: list[tuple[str, str]], separator: str) -> list[tuple[str, int]]:
    """Label names as they are written: ``name_(series)`` -> ``name, series`` for characters
    (``expand_characters``), ``_`` -> space in names longer than 3 characters (so ``^_^`` stays), then
    exact ``(source, target)`` replacements, in that order."""
    table = dict(replacements)
    out = []
    for name, cat in labels:
        if expand_characters and cat == CHARACTER and name.endswith(")"):
            head, _, series = name.rpartition("(")
            name = head.removesuffix("_") + separator + series.replace(")", "")
        if remove_underscore and len(name) > 3:
            name = name.replace("_", " ")
        out.append((table.get(name, name), cat))
    return out


def select_tags(probs: np.ndarray, labels: list[tuple[str, int]], opts: TagOptions) -> tuple[list[str], list[str]]:
    """``(tags, found)`` of one image. ``found`` lists them in label order with the rating last (the order
    kohya counts frequencies in); ``tags`` is the caption order: general and character tags at or above their threshold in
    label order (``character_tags_first``: each character tag moved to the front in turn), the rating
    with the highest probability first (``use_rating_tags``) or last (``_as_last_tag``), then each of
    ``always_first`` that is present moved to the front in turn (so the last one listed ends first)."""
    tags: list[str] = []
    found: list[str] = []
    for p, (name, cat) in zip(probs, labels):
        if name in opts.undesired:
            continue
        if cat == GENERAL and p >= opts.general_threshold:
            tags.append(name)
            found.append(name)
        elif cat == CHARACTER and p >= opts.character_threshold:
            found.append(name)
            # kohya-compat: inserted one by one at the front, so character tags end in reverse label order
            tags.insert(0, name) if opts.character_tags_first else tags.append(name)
    ratings = [(p, name) for p, (name, cat) in zip(probs, labels) if cat == RATING]
    if ratings and (opts.use_rating_tags or opts.use_rating_tags_as_last_tag):
        rating = ratings[int(np.argmax([p for p, _ in ratings]))][1]
        if rating not in opts.undesired:
            tags.insert(0, rating) if opts.use_rating_tags else tags.append(rating)
            found.append(rating)
    for tag in opts.always_first:
        if tag in tags:
            tags.remove(tag)
            tags.insert(0, tag)
    return tags, found


def merge_existing(existing: str, new_tags: list[str], separator: str) -> list[str]:
    """``--append_tags``: the existing caption's tags, then the new tags it does not have yet."""
    old = [t.strip() for t in existing.strip("\n").split(separator.strip()) if t.strip()]
    return old + [t for t in new_tags if t not in old]
