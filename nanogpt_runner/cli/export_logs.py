"""``nanogpt-export-logs RUNS_DIR --to tensorboard|wandb|trackio|mlflow``: replay runs into a tracker.

For runs made before a logger was chosen, or on a cluster without network: every run under RUNS_DIR
goes through the same adapter a live run uses (nanogpt_runner.runs.trackers), so the tracker shows what the
live logger would have. Where the data goes comes from this command line and the user's environment
(``--project``, ``--tracking-uri`` or MLFLOW_TRACKING_URI, WANDB_* variables; TensorBoard: RUN_DIR/tensorboard),
never from a run's run.json, which may come from anyone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanogpt_runner.console import error
from nanogpt_runner.runs.rundir import find_runs
from nanogpt_runner.runs.trackers import TRACKERS, replay


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-export-logs", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="a runs folder (e.g. outputs/) or one run directory")
    parser.add_argument("--to", required=True, choices=list(TRACKERS), help="the tracker to replay into")
    parser.add_argument("--project", default=None, help="wandb/trackio project (default: nanogpt-runner)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's local store)")
    return parser


def destinations(args: argparse.Namespace):
    """The ``logger`` section replayed into: the defaults, with what this command line names."""
    from omegaconf import OmegaConf

    from nanogpt_runner.config.schema import LoggerConfig

    loggers = OmegaConf.structured(LoggerConfig)
    if args.project is not None:
        loggers.wandb.project = loggers.trackio.project = args.project
    loggers.mlflow.tracking_uri = args.tracking_uri
    return loggers


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    if not args.runs_dir.is_dir():
        error(f"{args.runs_dir} is not a folder: give the runs folder (e.g. outputs/) or a run directory")
        sys.exit(2)
    if problem := _missing(args.to):
        error(problem)
        sys.exit(2)
    runs = list(find_runs(args.runs_dir))
    if not runs:
        error(f"no runs under {args.runs_dir} (a run directory holds run.json)")
        sys.exit(1)
    failures: list[str] = []
    for run_dir in runs:
        sent = replay(run_dir, args.to, destinations(args), warn=lambda message, run=run_dir: failures.append(
            f"{run}: {message}"))
        print(f"{run_dir}: {sent} metrics lines sent to {args.to}")
    for failure in failures:
        error(failure)
    sys.exit(1 if failures else 0)


def _missing(name: str) -> str | None:
    from omegaconf import OmegaConf

    from nanogpt_runner.config.schema import LoggerConfig
    from nanogpt_runner.runs.trackers import logger_problems

    loggers = OmegaConf.structured(LoggerConfig)
    loggers[name].enabled = True
    problems = logger_problems(loggers)
    return problems[0] if problems else None


if __name__ == "__main__":
    main()
