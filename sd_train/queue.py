"""Run queue: several ``--config_file`` runs one after another, each in its own process (``sd_train_queue``).

``sd_train_queue CONFIG... | FOLDER`` (or ``python -m sd_train.queue``) first checks every config before
any model loads (options, dataset, model path, network module, sample prompts), then trains them in
order, each as ``python -m sd_train.sdxl_train_network --config_file CONFIG`` (or ``train_network``) with
its output in a log file, so a crash or an out-of-memory kill of one run never takes the queue down.
A config whose final model file already exists is skipped (re-running the queue resumes it) unless
``--rerun``. The end is a table of config, status, time, output file and final loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from library.errors import UserError, first_line, run_cli

RESULT_ENV = "SD_TRAIN_RESULT_FILE"  # the trainer writes its final loss there (see write_result)
logger = logging.getLogger(__name__)


@dataclass
class QueueItem:
    """One config of the queue and what became of it."""

    config: Path
    entry: str = ""
    output: Path | None = None
    status: str = "not run"
    error: str = ""
    seconds: float | None = None
    loss: float | None = None
    log: Path | None = None


def collect_configs(paths: list[str]) -> list[Path]:
    """Config files in the order given; a folder adds its ``*.toml`` / ``*.json`` files sorted by name, less
    dataset configs (those with a ``datasets`` table)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".toml", ".json") and p.is_file())
            found += [p for p in files if not _is_dataset_config(p)]
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path}: no such config file or folder")
    if not found:
        raise UserError(f"no .toml or .json training configs in {', '.join(paths)}")
    return found


def _is_dataset_config(path: Path) -> bool:
    from sd_train.config_io import read_document

    try:
        return "datasets" in read_document(str(path))
    except UserError:
        return False  # not readable: the check of this config names the problem


def _model_family(model) -> str | None:
    """Family name of a local checkpoint file or diffusers folder, from headers only (``None``: cannot tell)."""
    from library.checkpoint.diffusers_folder import folder_family
    from library.io.safetensors_io import read_header
    from library.models.detect import family_of_checkpoint

    try:
        if isinstance(model, str) and os.path.isdir(model):
            return folder_family(Path(model))
        if isinstance(model, str) and model.endswith(".safetensors") and os.path.isfile(model):
            return family_of_checkpoint(read_header(model)[0])
    except UserError:
        return None
    return None


def _entry_of(spec) -> str:
    """The trainer entry (``ENTRIES`` key) whose script trains the family ``spec``."""
    from sd_train.families import ENTRIES

    return next(e for e, cls in ENTRIES.items() if cls.script() == spec.trainer_script)


def detect_entry(config: Path, choice: str) -> str:
    """The entry point of a config: ``choice`` unless ``auto``; then a GUI preset's model checkboxes (``v2``,
    ``sdxl``), else the family of the config's local ``pretrained_model_name_or_path``.

    Raises:
        UserError: neither tells (a hub id, a missing file): pass ``--entry``.
    """
    from library.models.families import family_spec
    from sd_train.config_io import read_document
    from sd_train.gui_preset import is_gui_preset, preset_family

    if choice != "auto":
        return choice
    doc = read_document(str(config))
    spec = preset_family(doc) if is_gui_preset(doc) else None
    if spec is not None:
        return _entry_of(spec)
    flat = {**{k: v for t in doc.values() if isinstance(t, dict) for k, v in t.items()}, **doc}
    family = _model_family(flat.get("pretrained_model_name_or_path"))
    if family is None:
        raise UserError(f"{config}: cannot tell the model family from pretrained_model_name_or_path (not a local "
                        "checkpoint or diffusers folder); pass --entry")
    return _entry_of(family_spec(family))


def check_config(item: QueueItem) -> None:
    """Pre-flight of one config without loading a model; sets ``item.output``. Raises UserError."""
    from library.checkpoint.hub import is_hub_id
    from library.dataset import CliDefaults, build_plan, prepare
    from sd_train import checkpointing, sampling
    from sd_train.cli import parse_options
    from sd_train.families import family_class
    from sd_train.network_host import NetworkHost

    opts = parse_options(["--config_file", str(item.config)], item.entry)
    m, s = opts.model, opts.saving
    if not m.pretrained_model_name_or_path:
        raise UserError("pretrained_model_name_or_path is not set")
    if not is_hub_id(m.pretrained_model_name_or_path) and not os.path.exists(m.pretrained_model_name_or_path):
        raise UserError(f"pretrained_model_name_or_path {m.pretrained_model_name_or_path}: not found")
    if not s.output_dir:
        raise UserError("output_dir is not set (the queue needs it to find the run's output)")
    item.output = Path(s.output_dir) / checkpointing.model_file_name("final", s.output_name, s.save_model_as)
    flat, family = opts.flat(), family_class(item.entry).spec_for(m.v2)
    defaults = CliDefaults(**{k: flat[k] for k in CliDefaults.__dataclass_fields__ if k in flat})
    d = opts.dataset
    prepare(build_plan(defaults), seed=opts.training.seed or 0, bucket_step_multiple=family.bucket_step_multiple,
            latents_cached=d.cache_latents or d.cache_latents_to_disk)
    NetworkHost.load(opts.network.network_module or "networks.lora")
    if opts.sampling.sample_prompts:
        sampling.load_prompts(opts.sampling.sample_prompts)


def _error_line(log: Path) -> str:
    """The run's one-line error (``error: …``), else the last line it printed."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def run_item(item: QueueItem, index: int, log_dir: Path) -> None:
    """Train one config in a child process; fills status, time, loss and log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    item.log = log_dir / f"{index:02d}_{item.config.stem}.log"
    result = log_dir / f"{index:02d}_{item.config.stem}.result.json"
    result.unlink(missing_ok=True)
    from sd_train.families import family_class

    script = Path(family_class(item.entry).script()).stem
    cmd = [sys.executable, "-m", f"sd_train.{script}", "--config_file", str(item.config)]
    print(f"[{index}] {item.config}: training ({script}), log {item.log}", flush=True)
    start = time.monotonic()
    with open(item.log, "w", encoding="utf-8") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, RESULT_ENV: str(result)})
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save and stop on its own
            child.wait()
            item.status, item.seconds = "interrupted", time.monotonic() - start
            raise
    item.seconds = time.monotonic() - start
    if result.is_file():
        item.loss = json.loads(result.read_text()).get("final_loss")
    if code == 0 and item.output is not None and item.output.exists():
        item.status = "done"
    elif code < 0:
        item.status, item.error = "failed", f"killed by signal {-code}"
    else:
        item.status = "failed"
        item.error = f"exit {code}: {_error_line(item.log)}" if code else f"no {item.output} was written"


def format_table(items: list[QueueItem]) -> str:
    """The final table: #, config, status, time, output file, final loss."""
    rows = [("#", "config", "status", "time", "output", "final loss")]
    for i, it in enumerate(items, start=1):
        took = "" if it.seconds is None else f"{int(it.seconds // 60)}m{it.seconds % 60:04.1f}s"
        status = f"{it.status}: {it.error}" if it.error else it.status
        output = str(it.output) if it.output is not None and it.output.exists() else ""
        loss = "" if it.loss is None else f"{it.loss:.4f}"
        rows.append((str(i), str(it.config), status, took, output, loss))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(r, widths)), r[-1]]).rstrip() for r in rows)


def write_result(trainer) -> None:
    """Called by the trainer after a finished run: ``{"final_loss", "steps"}`` to ``$SD_TRAIN_RESULT_FILE``."""
    path = os.environ.get(RESULT_ENV)
    if path and trainer.accelerator.is_main_process:
        Path(path).write_text(json.dumps({"final_loss": trainer.losses.average,
                                          "steps": trainer.progress.global_step}))


def build_parser() -> argparse.ArgumentParser:
    """``sd_train_queue`` options."""
    p = argparse.ArgumentParser(prog="sd_train_queue", description="Train several configs one after another, "
                                "each in its own process.")
    p.add_argument("configs", nargs="+", metavar="CONFIG_OR_FOLDER",
                   help="training TOML/JSON files, or folders whose .toml/.json configs run in name order")
    from sd_train.families import ENTRIES

    p.add_argument("--entry", choices=("auto", *ENTRIES), default="auto",
                   help="training script: sd = train_network, sdxl = sdxl_train_network; auto reads the "
                        "preset's model checkboxes or the checkpoint (default)")
    p.add_argument("--continue_on_error", action="store_true",
                   help="go on with the next config after a config fails its check or its run")
    p.add_argument("--dry_run", action="store_true", help="check every config (no model loads), train nothing")
    p.add_argument("--rerun", action="store_true", help="train configs whose output file already exists too")
    p.add_argument("--log_dir", default="queue_logs", help="folder of the per-run log files (default queue_logs)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _check_all(items: list[QueueItem], choice: str) -> None:
    for item in items:
        try:
            item.entry = detect_entry(item.config, choice)
            check_config(item)
            item.status = "checked"
        except UserError as exc:
            item.status, item.error = "invalid", first_line(exc)
        print(f"{item.config}: {item.status}{': ' + item.error if item.error else ''}", flush=True)


def run_queue(args: argparse.Namespace) -> int:
    """Check every config, then train them in order; print the table. Returns 0, or 1 if any config failed."""
    items = [QueueItem(p) for p in collect_configs(args.configs)]
    _check_all(items, args.entry)
    bad = [it for it in items if it.status == "invalid"]
    if args.dry_run or (bad and not args.continue_on_error):
        if bad and not args.dry_run:
            print(f"{len(bad)} config(s) failed the check; nothing was trained (fix them or pass "
                  "--continue_on_error)")
        print(format_table(items))
        return 1 if bad else 0
    try:
        for index, item in enumerate(items, start=1):
            if item.status == "invalid":
                continue
            if item.output.exists() and not args.rerun:
                item.status = "skipped (output exists)"
                continue
            run_item(item, index, Path(args.log_dir))
            if item.status != "done" and not args.continue_on_error:
                break
    finally:
        print(format_table(items))
    return 0 if all(it.status in ("done", "skipped (output exists)") for it in items) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sd_train_queue``; exits with the status when ``argv`` is None."""
    from library.log import setup_logging

    def _main(args: list[str]) -> int:
        setup_logging()
        return run_queue(build_parser().parse_args(args))

    code = run_cli(_main, argv)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
