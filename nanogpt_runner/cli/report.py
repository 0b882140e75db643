"""``nanogpt-report``'s command line (the report itself: nanogpt_runner.analysis.report, whose docstring is the
description)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanogpt_runner.analysis import report
from nanogpt_runner.analysis.records import load_runs
from nanogpt_runner.analysis.report import ReportFolderError, notes_text, write_report


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-report", description=report.__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="folder holding runs (searched recursively for run.json)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default RUNS_DIR/report)")
    parser.add_argument("--target-loss", type=float, default=None, help="val loss for the time-to-target column")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing folder that nanogpt-report did not make (never through a symlink)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        parser.error(f"runs folder {args.runs_dir} does not exist or is not a folder: pass the folder that holds "
                     f"your runs, e.g. nanogpt-report outputs/")
    runs = load_runs(args.runs_dir)
    if not runs:
        parser.error(f"no runs (folders with a run.json) under {args.runs_dir}: start one with nanogpt-run, "
                     f"or point at the folder that holds them")
    out_dir = args.out or args.runs_dir / "report"
    try:
        paths = write_report(runs, out_dir, args.target_loss, args.force)
    except ReportFolderError as err:
        parser.error(str(err))
    except OSError as err:
        parser.error(f"cannot write the report to {out_dir} ({err.strerror}): pass --out DIR with a writable folder")
    print(notes_text(runs, args.target_loss))
    print(f"\n{len(runs)} runs: wrote " + " and ".join(str(p) for p in paths))


if __name__ == "__main__":
    sys.exit(main())
