"""Check a dataset and print its report without loading any model: ``check_dataset``.

Reads the dataset TOML/JSON (or the folder convention / ``--in_json``), checks every image header,
reads the captions, assigns buckets and prints the dataset report. ``--json`` prints one
JSON document instead: datasets with per-image ``{"path", "bucket", "resized", "crop_ltrb",
"original_size", "crop_top_left"}`` and per-bucket ``{"resolution", "count", ...}`` entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from library.dataset import CliDefaults, build_plan, prepare
from library.errors import run_cli
from library.models.families import family_from_flags
from tools._common import add_dataset_flags, describe


def setup_parser() -> argparse.ArgumentParser:
    """Every dataset flag of the trainer (kohya names) plus ``--sdxl``, ``--seed``, ``--json``."""
    p = argparse.ArgumentParser(prog="check_dataset", description=describe(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_flags(p)
    p.add_argument("--sdxl", action="store_true", help="SDXL rules: bucket steps multiple of 32, "
                   "'sdxl' cache names")
    p.add_argument("--cache_latents", action="store_true", help="the run caches latents: without bucketing, "
                   "images are then resized to the resolution instead of having to match it")
    p.add_argument("--seed", type=int, default=42, help="seed for the validation split fallback")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def main(argv=None) -> int:
    """Entry point: returns 0, or prints one error line and returns 2 (via ``run_cli``)."""
    if argv is None:
        return run_cli(main, sys.argv[1:])
    args = setup_parser().parse_args(argv)
    names = {f.name for f in dataclasses.fields(CliDefaults)}
    defaults = CliDefaults(**{k: v for k, v in vars(args).items() if k in names})
    plan = build_plan(defaults)
    data = prepare(plan, seed=args.seed, bucket_step_multiple=family_from_flags(sdxl=args.sdxl).bucket_step_multiple,
                   latents_cached=args.cache_latents)
    if args.json:
        print(json.dumps(data.report(), indent=1))
    else:
        print(data.format_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
