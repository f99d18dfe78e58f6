"""sd-train: the application layer (CLI, orchestration, training loop)."""

__version__ = "0.1.0"
