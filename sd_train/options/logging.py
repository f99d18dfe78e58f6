"""Logging and tracking options (CLI.md §5.10)."""

from __future__ import annotations

from dataclasses import dataclass

from sd_train.options.base import flag, opt


@dataclass(frozen=True)
class LoggingOptions:
    """Trackers (TensorBoard, W&B) and console logging."""

    logging_dir: str | None = opt(
        None, "Enables tracking; run logs go to {logging_dir}/{log_prefix}{time}", common=True)
    log_with: str | None = opt(None, "Tracker (default: tensorboard when --logging_dir is set)",
                               choices=("tensorboard", "wandb", "all"))
    log_prefix: str | None = opt(None, "Prefix of the run folder name")
    log_tracker_name: str | None = opt(None, "Tracker/project name (default network_train)")
    log_tracker_config: str | None = opt(None, "TOML file with tracker init arguments")
    wandb_run_name: str | None = opt(None, "W&B run name")
    wandb_api_key: str | None = opt(None, "W&B key (never logged or written)")
    log_config: bool = flag("Log the options to the trackers (secrets and absolute paths removed)")
    console_log_level: str | None = opt(
        None, "Console log level (default INFO)", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    console_log_file: str | None = opt(None, "Log to this file instead of stderr")
    console_log_simple: bool = flag("Plain log format")
    quiet: bool = flag("No per-epoch, per-file and ETA lines (the plan, warnings and the end summary still print)",
                       ours=True)
    debug: bool = flag("Show full tracebacks of errors", ours=True)
