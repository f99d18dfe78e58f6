"""Helpers shared by the LoRA tools: precision flags, devices, metadata updates, progress bars."""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

from library.errors import UserError
from library.lora.file import DTYPES
from library.models.families import family_spec

PRECISIONS = ("float", "fp16", "bf16")
_MINIMAL_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                 "ss_network_args")


DATASET_FLAG_HELP = {  # the trainer's help of its non-caption dataset flags (a test keeps them equal)
    "train_data_dir": 'Parent of the N_name image folders (with --in_json: the image folder)',
    "reg_data_dir": 'Parent of the N_name folders with regularization images',
    "in_json": 'Fine-tuning metadata file (.json / .jsonl)',
    "dataset_repeats": 'Repeats of the --in_json subset',
    "dataset_config": 'Dataset TOML/JSON; replaces --train_data_dir, --reg_data_dir and --in_json',
    "resolution": "Training resolution 'SIZE' or 'WIDTH,HEIGHT'",
    "enable_bucket": 'Aspect-ratio bucketing',
    "min_bucket_reso": 'Smallest bucket side in pixels',
    "max_bucket_reso": 'Largest bucket side in pixels',
    "bucket_reso_steps": 'Bucket side granularity (SDXL: multiple of 32, SD1/2: multiple of 64)',
    "bucket_no_upscale": 'One bucket per image size, never upscale',
    "resize_interpolation": 'Resize filter (default: area when shrinking, lanczos when enlarging)',
    "caption_extension": 'Caption file extension',
    "caption_extention": 'Old misspelling of --caption_extension',
    "cache_info": 'Cache captions and image sizes in metadata_cache.json per image folder',
    "color_aug": 'Weak color augmentation (incompatible with latent caching)',
    "flip_aug": 'Random horizontal flip with probability 0.5',
    "face_crop_aug_range": "'a,b': face-centred crop scale range (needs name_cx_cy_w_h file names)",
    "random_crop": 'Random instead of centred trim (incompatible with latent caching)',
    "alpha_mask": 'Use the image alpha channel as a loss mask',
    "masked_loss": 'Multiply the loss by masks from --conditioning_data_dir',
    "conditioning_data_dir": 'Mask images for --masked_loss (same stem as the images)',
    "train_batch_size": 'Images per batch per process',
    "validation_split": 'Fraction of each dataset held out for validation',
    "validation_seed": 'Seed of the split and of validation noise (default --seed)',
    "prior_loss_weight": 'Loss weight of regularization images',
    "max_train_steps": 'Optimizer steps to train',
}
_ROLE = re.compile(r":(?:class|func|mod|meth|data):`~?([^`]+)`")


def describe(doc: str) -> str:
    """A module docstring as ``--help`` text: Sphinx roles and double backquotes removed, ``%`` escaped."""
    text = _ROLE.sub(lambda m: m.group(1).rpartition(".")[2], doc)
    return re.sub(r"``([^`]+)``", r"\1", text).replace("%", "%%").strip()


def add_dataset_flags(parser) -> None:
    """One ``--name`` per dataset flag of training (:class:`library.dataset.config.CliDefaults`), same defaults."""
    import dataclasses
    import typing

    from library.dataset.captions import CAPTION_RULES
    from library.dataset.config import CliDefaults

    help_texts = {**{rule.name: rule.help for rule in CAPTION_RULES}, **DATASET_FLAG_HELP}
    hints = typing.get_type_hints(CliDefaults)
    for f in dataclasses.fields(CliDefaults):
        options = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind = next((k for k in (bool, int, float) if k in options), str)
        text = help_texts[f.name].replace("%", "%%")
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", help=text)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=text)


def add_common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--overwrite``, ``--debug`` and (optionally) ``--device``."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (sd-train: kohya overwrites silently)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    if device:
        parser.add_argument("--device", default=None, help="device for the linear algebra, e.g. cuda (I/O stays on CPU)")


def dtype_of(name: str | None) -> torch.dtype | None:
    """torch dtype of a ``--precision``/``--save_precision`` value (None stays None)."""
    return None if name is None else DTYPES[name]


def device_of(name: str | None) -> torch.device:
    """Compute device; UserError when CUDA is asked for but missing."""
    dev = torch.device(name or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def check_ratios(models: list, ratios: list | None) -> list[float]:
    """One ratio per model (UserError otherwise)."""
    if ratios is None or len(ratios) != len(models):
        raise UserError(f"--ratios: give one ratio per model ({len(models)} models, {len(ratios or [])} ratios)")
    return [float(r) for r in ratios]


def add_lbws(parser: argparse.ArgumentParser) -> None:
    """``--lbws``: one JSON list of layer-block weights per model."""
    parser.add_argument("--lbws", nargs="*", default=None,
                        help="per-model layer-block weights as JSON lists of 12/20 (SDXL) or 17/26 (SD) values")


def parse_lbws(lbws: list[str] | None, models: list) -> list[list[float] | None]:
    """Validated LBW lists, one per model (``None`` entries without ``--lbws``)."""
    import json

    from library.lora.convert import LBW_LENGTHS

    if not lbws:
        return [None] * len(models)
    if len(lbws) != len(models):
        raise UserError(f"--lbws: give one list per model ({len(models)} models, {len(lbws)} lists)")
    try:
        lists = [json.loads(v) for v in lbws]
    except json.JSONDecodeError:
        raise UserError("--lbws: each value must be a JSON list such as [1,1,0.5,…]") from None
    ok = all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in lists)
    if not ok or len({len(v) for v in lists}) != 1 or len(lists[0]) not in LBW_LENGTHS:
        raise UserError(f"--lbws: lists of numbers, all of one length in {LBW_LENGTHS} (12/20 SDXL, 17/26 SD)")
    return [[float(x) for x in v] for v in lists]


def progress(items: Iterable, desc: str, total: int | None = None):
    """A tqdm progress bar over modules (plain iteration when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, desc=desc, total=total, leave=False)


def progress_bar(total: int, desc: str):
    """A manually updated tqdm bar (``.update(1)`` per item)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def lora_metadata(base: Mapping[str, str], save_to: str, inputs: list[str], family: str | None = None,
                  minimal: bool = False) -> dict[str, str]:
    """Copy ``base`` and set ``modelspec.title``/``date``/``merged_from`` (TOOLS.md §0)."""
    meta = dict(base)
    if minimal:
        meta = {k: v for k, v in meta.items() if k in _MINIMAL_KEYS or k.startswith("modelspec.")}
    meta.pop("sshs_model_hash", None)
    meta.pop("sshs_legacy_hash", None)
    meta.setdefault("modelspec.sai_model_spec", "1.0.1")
    if family and "modelspec.architecture" not in meta:
        meta["modelspec.architecture"] = family_spec(family).modelspec_architecture(False) + "/lora"
    meta["modelspec.title"] = Path(save_to).stem
    meta["modelspec.date"] = datetime.datetime.now().replace(microsecond=0).isoformat()
    meta["modelspec.merged_from"] = ", ".join(Path(p).stem for p in inputs)
    return meta


def common_value(values: Iterable, as_float: bool = False) -> str:
    """The one value shared by all, as text (``"4"``, or ``"2.0"`` with ``as_float``), else ``Dynamic``."""
    vals = {float(v) for v in values}
    if len(vals) != 1:
        return "Dynamic"
    v = vals.pop()
    return str(int(v)) if v.is_integer() and not as_float else str(v)
