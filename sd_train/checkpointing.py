"""kohya file names, pruning, atomic state folders and ``train_state.json`` (CLI.md §8, §9).

Step arithmetic (CLI.md §7) lives in ``sd_train.steps``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from library.errors import UserError

DEFAULT_NAMES = {"step": "at", "epoch": "epoch", "final": "last", "interrupted": "last"}
TRAIN_STATE = "train_state.json"
FORMAT_VERSION = 1
EMBEDDING_SUFFIX = "_emb.safetensors"  # beside a pivotal-tuning LoRA: {stem}_emb.safetensors


def _stem(kind: str, output_name: str | None, index: int | None) -> str:
    if kind not in DEFAULT_NAMES:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_NAMES)}, not {kind!r}")
    name = output_name or DEFAULT_NAMES[kind]
    if kind == "step":
        return f"{name}-step{index:08d}"
    if kind == "epoch":
        return f"{name}-{index:06d}"
    if kind == "interrupted":  # sd-train: the save of a run stopped by SIGINT/SIGTERM
        return f"{name}-interrupted"
    return name


def model_file_name(kind: str, output_name: str | None, ext: str, index: int | None = None) -> str:
    """File name of a saved model.

    Args:
        kind: ``"step"`` (``index`` = global step), ``"epoch"`` (``index`` = epoch from 1), ``"final"`` or
            ``"interrupted"`` (``name-interrupted``).
        output_name: ``--output_name`` or ``None`` (defaults ``at`` / ``epoch`` / ``last``).
        ext: ``--save_model_as`` (``safetensors``, ``ckpt``, ``pt``).

    Returns:
        e.g. ``name-step00000500.safetensors``, ``name-000003.safetensors``, ``name.safetensors``,
        ``name-interrupted.safetensors``.
    """
    return f"{_stem(kind, output_name, index)}.{ext}"


def ema_path(path: str | os.PathLike) -> Path:
    """The ``--ema_save_as both`` sibling of a model file: ``NAME-ema.safetensors`` next to ``NAME.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-ema{path.suffix}")


def embedding_file(model_path: str | os.PathLike) -> Path:
    """``{stem}_emb.safetensors`` beside a model file: the embedding file of a pivotal-tuning LoRA."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}{EMBEDDING_SUFFIX}")


def state_dir_name(kind: str, output_name: str | None, index: int | None = None) -> str:
    """Folder name of a saved state: ``{stem}-state`` with the stem of :func:`model_file_name`."""
    return f"{_stem(kind, output_name, index)}-state"


def sample_image_name(output_name: str | None, *, index: int, timestamp: str, epoch: int | None = None,
                      step: int | None = None, seed: int | None = None) -> str:
    """Relative path of a sample image: ``sample/{name_}{e000003|000500}_{ii}_{YYYYmmddHHMMSS}[_{seed}].png``.

    Args:
        output_name: ``--output_name`` (no ``name_`` part when ``None``).
        index: Prompt index.
        timestamp: ``time.strftime("%Y%m%d%H%M%S")``.
        epoch: Epoch (counted from 1) for end-of-epoch samples, else ``None``.
        step: Global step for step samples (used when ``epoch`` is ``None``).
        seed: The prompt's seed when it has one.
    """
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    prefix = "" if output_name is None else f"{output_name}_"
    suffix = "" if seed is None else f"_{seed}"
    return f"sample/{prefix}{number}_{index:02d}_{timestamp}{suffix}.png"


def epoch_to_remove(epoch: int, save_every_n_epochs: int | None, keep_last_n: int | None) -> int | None:
    """Epoch whose file is removed after saving ``epoch``: ``epoch - every × keep``, if ≥ 0."""
    if not save_every_n_epochs or not keep_last_n:
        return None
    old = epoch - save_every_n_epochs * keep_last_n
    return old if old >= 0 else None


def step_to_remove(step: int, save_every_n_steps: int | None, keep_last_n_steps: int | None) -> int | None:
    """Step whose file is removed after saving ``step``: ``r - r % every`` with ``r = step - keep - 1``."""
    if not save_every_n_steps or keep_last_n_steps is None:
        return None
    r = step - keep_last_n_steps - 1
    if r < 0:
        return None
    return r - r % save_every_n_steps


def _remove(path: Path) -> bool:
    if path.is_dir():
        shutil.rmtree(path)
        return True
    if path.exists():
        path.unlink()
        return True
    return False


def prune_after_save(output_dir: str | os.PathLike, new_path: str | os.PathLike, kind: str,
                     output_name: str | None, index: int, every: int | None, keep: int | None,
                     ext: str | None = None) -> str | None:
    """Remove the model file (``ext`` given) or state folder (``ext=None``) that ``keep`` rules out.

    Runs only after the new file exists (a crash never loses the newest copy).

    Args:
        output_dir: ``--output_dir``.
        new_path: The file or folder just written (must exist).
        kind: ``"step"`` or ``"epoch"``.
        index: The step / epoch just saved.
        every: ``--save_every_n_steps`` / ``--save_every_n_epochs``.
        keep: ``--save_last_n_steps[_state]`` / ``--save_last_n_epochs[_state]`` (state falls back
            to the model value; the caller resolves that).

    Returns:
        The removed path, or ``None``.
    """
    if not Path(new_path).exists():
        raise FileNotFoundError(f"{new_path}: not written; refusing to prune older saves")
    old = step_to_remove(index, every, keep) if kind == "step" else epoch_to_remove(index, every, keep)
    if old is None or old == index:
        return None
    name = model_file_name(kind, output_name, ext, old) if ext else state_dir_name(kind, output_name, old)
    target = Path(output_dir) / name
    if ext:  # its --ema_save_as both sibling and a pivotal-tuning embedding file go with it
        _remove(ema_path(target))
        _remove(embedding_file(target))
    return str(target) if _remove(target) else None


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``--output_dir`` and prove it takes files, before any model loads.

    Raises:
        UserError: the folder cannot be created or written to (one line naming it).
    """
    path = Path(output_dir)
    probe = path / f".sd-train-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{path}: --output_dir is not a writable folder ({err.strerror}); "
                        "choose another --output_dir") from None
    return path


@contextlib.contextmanager
def atomic_state_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder ``.{name}.tmp-{pid}`` next to ``final_dir``; rename it on success.

    An existing ``final_dir`` is replaced only after the new folder is complete. On an exception
    the temporary folder is removed and ``final_dir`` is left untouched.
    """
    final = Path(final_dir)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def write_train_state(state_dir: str | os.PathLike, current_epoch: int, current_step: int,
                      sd_train_record: dict[str, Any] | None) -> Path:
    """Write ``train_state.json``: kohya's two keys plus the ``sd_train`` resume record.

    Args:
        state_dir: The state folder (usually the temporary one of :func:`atomic_state_dir`).
        current_epoch: Epoch in progress, counted from 1.
        current_step: Global step.
        sd_train_record: ``global_step``, ``epoch_index``, ``batch_index_in_epoch``,
            ``micro_step_in_accumulation``, ``dataset_seed``, ``max_train_steps``,
            ``num_train_epochs``, ``options_fingerprint`` (``format_version`` is added). ``None``
            writes kohya's form only.
    """
    data: dict[str, Any] = {"current_epoch": int(current_epoch), "current_step": int(current_step)}
    if sd_train_record is not None:
        data["sd_train"] = {"format_version": FORMAT_VERSION, **sd_train_record}
    path = Path(state_dir) / TRAIN_STATE
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def read_train_state(state_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``train_state.json`` of a kohya or sd-train state folder.

    Returns:
        The dict (``"sd_train"`` present only for sd-train states).

    Raises:
        UserError: Missing folder/file, bad JSON, or missing ``current_step``.
    """
    path = Path(state_dir) / TRAIN_STATE
    if not path.is_file():
        raise UserError(f"{path}: not found; --resume needs a state folder written with --save_state")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the state folder is damaged") from exc
    if not isinstance(data, dict) or not isinstance(data.get("current_step"), int):
        raise UserError(f"{path}: missing 'current_step'; the state folder is damaged")
    record = data.get("sd_train")
    if record is not None and record.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: sd_train format_version {record.get('format_version')} is not supported")
    return data


def options_fingerprint(values: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``values`` (sorted keys, no spaces, ``str`` fallback)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
