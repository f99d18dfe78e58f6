"""Command-line tools: merge, resize, convert and inspect LoRAs and checkpoints.

May import: ``library``, ``networks``.
"""
