"""Rebuild the HTML report of a training run from its files: ``run_report OUTPUT_DIR`` (sd-train tool).

Reads what the run left in ``OUTPUT_DIR`` (``{name}_run.json``, ``{name}_dataset_report.json``,
``sample/*.png``, the LoRA files) and its TensorBoard events, and writes ``{name}_report.html``: the
same page the trainer writes at each save, so it also works for a run that crashed or was stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from library.errors import UserError, run_cli
from library.report import report_path, write_report
from library.report.sources import find_runs


def setup_parser() -> argparse.ArgumentParser:
    """``OUTPUT_DIR`` plus ``--output_name``, ``--logging_dir`` and ``--out``."""
    p = argparse.ArgumentParser(prog="run_report", description=__doc__)
    p.add_argument("output_dir", help="the run's --output_dir")
    p.add_argument("--output_name", default=None,
                   help="the run's --output_name (needed only when the folder holds several runs)")
    p.add_argument("--logging_dir", default=None,
                   help="TensorBoard folder of the run (default: the one recorded by the run)")
    p.add_argument("--out", default=None, help="write the page here (default: OUTPUT_DIR/{name}_report.html)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def pick_run(output_dir: Path, output_name: str | None) -> str:
    """The run to report on: ``--output_name``, or the only run in the folder."""
    if not output_dir.is_dir():
        raise UserError(f"{output_dir}: not a folder; pass the run's --output_dir")
    runs = find_runs(output_dir)
    if output_name:
        if output_name not in runs:
            found = ", ".join(runs) or "none"
            raise UserError(f"{output_dir}: no run named '{output_name}' (runs found: {found})")
        return output_name
    if not runs:
        raise UserError(f"{output_dir}: no run found (no *_run.json or *_dataset_report.json); "
                        "pass the --output_dir of a training run")
    if len(runs) > 1:
        raise UserError(f"{output_dir}: {len(runs)} runs ({', '.join(runs)}); choose one with --output_name")
    return runs[0]


def main(argv=None) -> int:
    """Console entry point (``run_report``)."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    args = setup_parser().parse_args(argv)
    out = Path(args.output_dir)
    name = pick_run(out, args.output_name)
    path = write_report(out, name, log_dir=args.logging_dir, dest=args.out or report_path(out, name))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
