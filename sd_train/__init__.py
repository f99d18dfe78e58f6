"""sd-train: the application layer (CLI, orchestration, training loop).

Network plugins, ``networks.lora`` included, are loaded by name through ``importlib``, never imported.

May import: ``library``.
"""

__version__ = "0.1.0"
