"""Reusable, torch-level building blocks of sd-train (no argparse, no sd_train imports).

Each sub-package's ``__init__`` says what lives there and what it may import; ``errors`` and ``log``
sit here because every package uses them.

May import: nothing outside the package.
"""
