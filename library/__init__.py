"""Reusable, torch-level building blocks of sd-train (no argparse, no sd_train imports)."""
