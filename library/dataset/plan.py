"""Build a :class:`DatasetPlan` from one of the three data declarations (DATASET.md §2)."""

from __future__ import annotations

import json
import os

from library.dataset.config import CliDefaults, resolve, validate_config
from library.dataset.specs import DatasetPlan
from library.dataset import scan
from library.errors import UserError

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_config_file(path: str) -> dict:
    """Read a dataset ``.toml`` or ``.json`` file; parse errors become one-line UserErrors."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: dataset config file not found")
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot parse dataset config: {exc}") from None


def _plan(datasets, source, mode, defaults, warnings) -> DatasetPlan:
    return DatasetPlan(datasets=datasets, source=source, mode=mode, warnings=warnings,
                       prior_loss_weight=defaults.prior_loss_weight,
                       max_train_steps=defaults.max_train_steps)


def plan_from_data(data: dict, defaults: CliDefaults, source: str, base_dir: str = "",
                   schema_only: bool = False) -> DatasetPlan:
    """Validate and resolve a parsed config; raise one UserError listing every error.

    Args:
        data: parsed TOML/JSON.
        defaults: command-line fallbacks.
        source: file name used in messages.
        base_dir: joined to relative paths inside the file ("" = as written).
        schema_only: skip the "resolution is set" check (used to lint example files).
    """
    errors = validate_config(data, masked_loss=defaults.masked_loss)
    datasets = [] if errors else resolve(data, defaults, base_dir)
    for i, ds in enumerate(datasets):
        if ds.resolution is None and not schema_only:
            errors.append(f"datasets[{i}]: resolution is not set; add resolution = 512 (or "
                          "[w, h]) or pass --resolution")
    if errors:
        raise UserError(f"{source}: {len(errors)} error(s): " + "; ".join(errors))
    ignored = [f"--{n}" for n in ("train_data_dir", "reg_data_dir", "in_json")
               if getattr(defaults, n)]
    warnings = [f"--dataset_config given: ignoring {', '.join(ignored)}"] if ignored else []
    return _plan(datasets, source, "config", defaults, warnings)


def _folder_subsets(parent: str, is_reg: bool, warnings: list[str]) -> list[dict]:
    if not os.path.isdir(parent):
        flag = "--reg_data_dir" if is_reg else "--train_data_dir"
        raise UserError(f"{flag} {parent}: folder not found")
    subsets = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not os.path.isdir(path):
            continue
        head, _, rest = name.partition("_")
        try:
            repeats = int(head)
        except ValueError:
            warnings.append(f"{path}: folder name is not N_name; skipped")
            continue
        if repeats < 1:
            warnings.append(f"{path}: repeats {repeats} < 1; skipped")
            continue
        sub = {"image_dir": path, "class_tokens": rest, "num_repeats": repeats}
        if is_reg:
            sub["is_reg"] = True
        subsets.append(sub)
    return subsets


def _no_subsets(parent: str, warnings: list[str]) -> str:
    """The error for a ``--train_data_dir`` without usable ``N_name`` subfolders, naming what was skipped."""
    skipped = [w.partition(": ")[0] for w in warnings if w.endswith("folder name is not N_name; skipped")]
    if skipped:
        name, names = os.path.basename(skipped[0]), ", ".join(repr(os.path.basename(p)) for p in skipped)
        return (f"--train_data_dir {parent}: no `N_name` subfolders; {names} "
                f"{'has' if len(skipped) == 1 else 'have'} no repeat count: rename e.g. '{name}' to '10_{name}' "
                "(10 repeats per epoch)")
    has_images = any(n.lower().endswith(scan.image_extensions()) for n in os.listdir(parent))
    hint = "did you mean its parent? (images go in e.g. train/10_sks dog/)" if has_images else \
        "images go in subfolders named like '10_sks dog' (10 repeats, class tokens 'sks dog')"
    return f"--train_data_dir {parent}: no `N_name` subfolders found; {hint}"


def plan_from_folders(defaults: CliDefaults) -> DatasetPlan:
    """The ``--train_data_dir`` / ``--reg_data_dir`` folder convention: one DB dataset."""
    warnings: list[str] = []
    parent = defaults.train_data_dir
    subsets = _folder_subsets(parent, False, warnings)
    if not subsets:
        raise UserError(_no_subsets(parent, warnings))
    if defaults.reg_data_dir:
        subsets += _folder_subsets(defaults.reg_data_dir, True, warnings)
    return _finish_cli_plan({"datasets": [{"subsets": subsets}]}, defaults, parent, "folders",
                            warnings)


def plan_from_in_json(defaults: CliDefaults) -> DatasetPlan:
    """``--in_json``: one fine-tuning subset over ``--train_data_dir``."""
    if not os.path.isfile(defaults.in_json):
        raise UserError(f"--in_json {defaults.in_json}: metadata file not found")
    sub = {"metadata_file": defaults.in_json, "num_repeats": defaults.dataset_repeats}
    if defaults.train_data_dir:
        sub["image_dir"] = defaults.train_data_dir
    return _finish_cli_plan({"datasets": [{"subsets": [sub]}]}, defaults, defaults.in_json,
                            "in_json", [])


def _finish_cli_plan(data, defaults, source, mode, warnings) -> DatasetPlan:
    if defaults.resolution is None:
        raise UserError("--resolution is required (e.g. --resolution 512 or 1024,768)")
    if defaults.dataset_repeats < 1 and mode == "in_json":
        raise UserError(f"--dataset_repeats must be >= 1, got {defaults.dataset_repeats}")
    return _plan(resolve(data, defaults), source, mode, defaults, warnings)


def build_plan(defaults: CliDefaults, base_dir: str = "") -> DatasetPlan:
    """Read the dataset TOML/JSON, or the folders, or ``--in_json`` into a DatasetPlan.

    Args:
        defaults: command-line values (the fallbacks of DATASET.md §3).
        base_dir: optional folder joined to relative paths of a dataset config.

    Raises:
        UserError: one line naming the file, every table path at fault and the fix.
    """
    if defaults.dataset_config:
        data = load_config_file(defaults.dataset_config)
        return plan_from_data(data, defaults, defaults.dataset_config, base_dir)
    if defaults.in_json:
        return plan_from_in_json(defaults)
    if defaults.train_data_dir:
        return plan_from_folders(defaults)
    raise UserError("no training data: pass --dataset_config, --train_data_dir (parent of N_name "
                    "folders) or --in_json")
