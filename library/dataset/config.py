"""Dataset TOML/JSON schema and the subset -> dataset -> general -> CLI -> default fallback.

The result is a :class:`DatasetPlan`: a plain tree ``datasets[] -> subsets[]`` where every value
is already resolved (DATASET.md §3). Nothing here touches images or models.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass

from library.dataset.captions import CAPTION_RULES, add_caption_fields
from library.dataset.specs import DatasetSpec, SubsetSpec


@dataclass
@add_caption_fields(after="cache_info")
class CliDefaults:
    """Command-line fallback values, named exactly like the kohya flags (CLI.md §5.2); the caption rules'
    fields are generated from ``library.dataset.captions.CAPTION_RULES``."""

    train_data_dir: str | None = None
    reg_data_dir: str | None = None
    in_json: str | None = None
    dataset_repeats: int = 1
    dataset_config: str | None = None
    resolution: str | None = None
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    resize_interpolation: str | None = None
    caption_extension: str = ".caption"
    caption_extention: str | None = None
    cache_info: bool = False
    color_aug: bool = False
    flip_aug: bool = False
    face_crop_aug_range: str | None = None
    random_crop: bool = False
    alpha_mask: bool = False
    masked_loss: bool = False
    conditioning_data_dir: str | None = None
    train_batch_size: int = 1
    validation_split: float = 0.0
    validation_seed: int | None = None
    prior_loss_weight: float = 1.0
    max_train_steps: int = 1600


# key -> (type name, levels among "GDS", kinds among "DB"/"FT"/"CN" or "all", built-in default);
# the caption rules come from CAPTION_RULES (every kind)
SCHEMA: dict[str, tuple[str, str, str, object]] = {
    "batch_size": ("int", "GD", "all", 1),
    "resolution": ("reso", "GD", "all", None),
    "enable_bucket": ("bool", "GD", "all", False),
    "min_bucket_reso": ("int", "GD", "all", 256),
    "max_bucket_reso": ("int", "GD", "all", 1024),
    "bucket_reso_steps": ("int", "GD", "all", 64),
    "bucket_no_upscale": ("bool", "GD", "all", False),
    "network_multiplier": ("num", "GD", "all", 1.0),
    "validation_split": ("float", "GD", "all", 0.0),
    "validation_seed": ("int", "GD", "all", None),
    "resize_interpolation": ("str", "GDS", "all", None),
    "num_repeats": ("int", "GDS", "all", 1),
    **{rule.name: (rule.toml_type, rule.levels, "all", rule.default) for rule in CAPTION_RULES},
    "color_aug": ("bool", "GDS", "all", False),
    "flip_aug": ("bool", "GDS", "all", False),
    "random_crop": ("bool", "GDS", "all", False),
    "face_crop_aug_range": ("pair", "GDS", "all", None),
    "custom_attributes": ("table", "GDS", "all", None),
    "caption_extension": ("str", "GDS", "DB CN", ".caption"),
    "cache_info": ("bool", "GDS", "DB CN", False),
    "class_tokens": ("str", "GDS", "DB", None),
    "image_dir": ("str", "S", "all", None),
    "is_reg": ("bool", "S", "DB", False),
    "alpha_mask": ("bool", "S", "DB FT", False),
    "metadata_file": ("str", "S", "FT", None),
    "conditioning_data_dir": ("str", "S", "CN", None),
}
DATASET_KEYS = tuple(k for k, v in SCHEMA.items() if v[1] == "GD")
SUBSET_KEYS = tuple(k for k, v in SCHEMA.items() if "S" in v[1])
LEVEL_NAMES = {"G": "[general]", "D": "[[datasets]]", "S": "[[datasets.subsets]]"}
INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")
CLI_NAMES = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
TYPE_HINTS = {
    "int": "an integer", "bool": "true or false", "float": "a float (write 0.0, not 0)",
    "num": "a number", "str": "a string", "reso": "an integer or [width, height]",
    "pair": "[float, float]", "table": "a table",
}


def type_ok(kind: str, value) -> bool:
    """True when ``value`` has the exact TOML type ``kind`` (bool is never a number)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = is_int or isinstance(value, float)
    if kind == "int":
        return is_int
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "float":
        return isinstance(value, float)  # kohya-compat: TOML 0 is not a float
    if kind == "num":
        return is_num
    if kind == "str":
        return isinstance(value, str)
    if kind == "table":
        return isinstance(value, dict)
    if kind == "reso":
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        return is_int or (pair and all(type_ok("int", v) for v in value))
    if kind == "pair":
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(
            type_ok("num", v) for v in value)
    return False


def _hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(SCHEMA), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_table(table: dict, level: str, path: str, masked_loss: bool, errors: list[str]):
    for key, value in table.items():
        spec = SCHEMA.get(key)
        if key == "conditioning_data_dir" and not masked_loss:  # kohya-compat: a key only with --masked_loss
            errors.append(f"{path}: conditioning_data_dir (mask images) needs masked_loss = true in the training "
                          "options; kohya rejects the key without it")
            continue
        if spec is None:
            errors.append(f"{path}: unknown key '{key}'.{_hint(key)}")
            continue
        kind, levels = spec[0], spec[1]
        if level not in levels:
            where = " or ".join(LEVEL_NAMES[lv] for lv in levels)
            errors.append(f"{path}: key '{key}' is not allowed in {LEVEL_NAMES[level]}; "
                          f"put it in {where}")
            continue
        if not type_ok(kind, value):
            errors.append(f"{path}.{key}: expected {TYPE_HINTS[kind]}, got {value!r}")
        elif key == "resize_interpolation" and value not in INTERPOLATIONS:
            errors.append(f"{path}.resize_interpolation: '{value}' is not one of "
                          f"{', '.join(INTERPOLATIONS)}")
        elif key == "num_repeats" and value < 1:
            # sd-train: kohya skips such a subset with a warning; an explicit TOML value is an error.
            errors.append(f"{path}.num_repeats: must be >= 1, got {value}")


def subset_kind(sub: dict) -> str:
    """DB, FT or CN from the keys a raw subset table has (DATASET.md §1)."""
    if sub.get("metadata_file") is not None:
        return "FT"
    if sub.get("conditioning_data_dir") is not None:
        return "CN"
    return "DB"


def _check_kind(table: dict, kind: str, path: str, what: str, errors: list[str]) -> None:
    """kohya's per-kind schemas: e.g. no caption_extension in a fine-tuning subset or dataset."""
    for key in table:
        kinds = SCHEMA.get(key, ("", "", "all"))[2]
        if kinds != "all" and kind not in kinds.split():
            errors.append(f"{path}: key '{key}' is not allowed in a {kind} {what} "
                          f"(only {kinds.replace(' ', '/')})")


def _check_subset(sub: dict, path: str, errors: list[str]) -> str:
    kind = subset_kind(sub)
    _check_kind(sub, kind, path, "subset", errors)
    if kind in ("DB", "CN") and not sub.get("image_dir"):
        errors.append(f"{path}: image_dir is required for a DreamBooth subset "
                      "(or give metadata_file for fine-tuning)")
    if kind == "CN" and sub.get("random_crop"):
        errors.append(f"{path}: random_crop is not allowed with conditioning_data_dir")
    return kind


def validate_config(data: dict, masked_loss: bool = False) -> list[str]:
    """Check a parsed dataset TOML/JSON against SCHEMA; return every error (empty = valid).

    Messages start with the table path, e.g. ``datasets[0].subsets[1]: unknown key 'num_repeat'``.
    """
    errors: list[str] = []
    for key in data:
        if key not in ("general", "datasets"):
            close = difflib.get_close_matches(key, ["general", "datasets"], n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            errors.append(f"top level: unknown key '{key}'; only [general] and [[datasets]] "
                          f"are allowed.{hint}")
    general = data.get("general", {})
    if not isinstance(general, dict):
        errors.append("general: must be a table")
        general = {}
    _check_table(general, "G", "general", masked_loss, errors)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        errors.append("datasets: at least one [[datasets]] table with [[datasets.subsets]] is "
                      "required")
        return errors
    for i, ds in enumerate(datasets):
        path = f"datasets[{i}]"
        if not isinstance(ds, dict):
            errors.append(f"{path}: must be a table")
            continue
        _check_table({k: v for k, v in ds.items() if k != "subsets"}, "D", path, masked_loss, errors)
        subsets = ds.get("subsets", [])
        if not isinstance(subsets, list) or not subsets:
            errors.append(f"{path}: empty dataset; add at least one [[datasets.subsets]]")
            continue
        kinds = set()
        for j, sub in enumerate(subsets):
            spath = f"{path}.subsets[{j}]"
            if not isinstance(sub, dict):
                errors.append(f"{spath}: must be a table")
                continue
            _check_table(sub, "S", spath, masked_loss, errors)
            kinds.add(_check_subset(sub, spath, errors))
        if "FT" in kinds and len(kinds) > 1:
            errors.append(f"{path}: DreamBooth subset and fine tuning subset cannot be mixed in "
                          "the same dataset")
        elif kinds == {"CN", "DB"}:  # kohya-compat: read as DreamBooth, whose subsets reject conditioning_data_dir
            errors.append(f"{path}: subsets with and without conditioning_data_dir cannot be mixed in one dataset; "
                          "split them into two [[datasets]]")
        elif len(kinds) == 1:  # kohya-compat: the dataset table follows its subsets' kind
            _check_kind({k: v for k, v in ds.items() if k != "subsets"}, kinds.pop(), path, "dataset", errors)
    return errors


def parse_resolution(value) -> tuple[int, int] | None:
    """``512`` / ``"512"`` -> (512, 512); ``[1024, 768]`` / ``"1024,768"`` -> (1024, 768)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [int(p) for p in value.split(",")]
        value = parts[0] if len(parts) == 1 else parts
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def cli_values(defaults: CliDefaults) -> dict:
    """The CLI fallbacks keyed by TOML key (None = unset); kohya renames two of them."""
    values = {}
    for key in SCHEMA:
        name = CLI_NAMES.get(key, key)
        values[key] = getattr(defaults, name, None)
    if defaults.caption_extention is not None:  # kohya-compat: the old misspelled flag wins when given
        values["caption_extension"] = defaults.caption_extention
    if isinstance(values["face_crop_aug_range"], str):
        values["face_crop_aug_range"] = [float(x) for x in values["face_crop_aug_range"].split(",")]
    if not defaults.masked_loss:
        values["conditioning_data_dir"] = None
    return values


def _lookup(key: str, chain: list[dict]):
    for table in chain:
        if table.get(key) is not None:
            return table[key]
    return SCHEMA[key][3]


def _resolve_subset(raw: dict, chain: list[dict], base_dir: str) -> SubsetSpec:
    values = {f.name: _lookup(f.name, [raw] + chain) for f in dataclasses.fields(SubsetSpec)
              if f.name != "kind"}
    for key in ("image_dir", "metadata_file", "conditioning_data_dir", "is_reg"):
        values[key] = raw.get(key, SCHEMA[key][3])
    values["alpha_mask"] = bool(raw.get("alpha_mask", chain[-1].get("alpha_mask")))
    for key in ("image_dir", "metadata_file", "conditioning_data_dir"):
        if values[key] is not None:
            values[key] = os.path.join(base_dir, values[key]) if base_dir else values[key]
    ext = values["caption_extension"] or ""
    if ext and not ext.startswith("."):
        ext = "." + ext
    values["caption_extension"] = ext
    if values["face_crop_aug_range"] is not None:
        values["face_crop_aug_range"] = tuple(float(x) for x in values["face_crop_aug_range"])
    values["custom_attributes"] = dict(values["custom_attributes"] or {})
    kind = subset_kind(raw)
    if kind == "FT":
        values["class_tokens"] = None
    return SubsetSpec(kind=kind, **values)


def resolve(data: dict, defaults: CliDefaults, base_dir: str = "") -> list[DatasetSpec]:
    """Turn a validated config dict into resolved :class:`DatasetSpec` objects.

    Args:
        data: the parsed TOML/JSON (already passed :func:`validate_config`).
        defaults: command-line fallbacks.
        base_dir: joined to relative ``image_dir`` / ``metadata_file`` ("" = as written).
    """
    general = data.get("general", {})
    cli = cli_values(defaults)
    out = []
    for ds in data["datasets"]:
        chain = [ds, general, cli]
        subsets = [_resolve_subset(sub, chain, base_dir) for sub in ds["subsets"]]
        spec = DatasetSpec(kind=subsets[0].kind, subsets=subsets)
        for key in DATASET_KEYS:
            setattr(spec, key, _lookup(key, chain))
        spec.resolution = parse_resolution(spec.resolution)
        spec.network_multiplier = float(spec.network_multiplier)
        out.append(spec)
    return out
