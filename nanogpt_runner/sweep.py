"""The end of a sweep: one table of every job, and the exit code.

Hydra 1.3's basic launcher aborts a sweep when a job raises, so each job records its outcome in its run
directory and returns; this callback (``hydra.callbacks.sweep_summary`` in conf/config.yaml) reads those
records once every job has run, prints the table, and exits non-zero when any job did not complete.
It reads run.json files only, so it works the same for the basic, submitit_local and submitit_slurm launchers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nanogpt_runner.runs import find_runs, read_run

EXIT_JOB_FAILED = 1


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """run.json of every job under ``sweep_dir``, in job order (jobs without a record are skipped)."""
    jobs = [run for run in (read_run(d) for d in find_runs(sweep_dir)) if run]
    return sorted(jobs, key=lambda run: ((run.get("sweep") or {}).get("job", math.inf), run.get("run_dir", "")))


def error_line(run: dict) -> str:
    """The line of a failure worth showing: the exception of the last traceback (which rank, if it says)."""
    text = (run.get("error") or "").strip()
    if not text:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    rank = next((line.split(":")[0] for line in reversed(lines) if line.startswith("rank ")), "")
    last = lines[-1].strip()
    if last.startswith("- "):  # an "invalid config" list: its first problem
        last = next((line.strip() for line in lines if line.strip().startswith("- ")), last)
    return f"{rank}: {last}" if rank and not last.startswith(rank) else last


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def summary_table(jobs: list[dict], sweep_dir: Path) -> Table:
    """One row per job; the overrides column shows what differs between jobs (the shared ones are in the title)."""
    overrides = [run.get("overrides") or [] for run in jobs]
    common = [o for o in overrides[0] if all(o in job for job in overrides)] if overrides else []
    title = f"sweep {sweep_dir}: {len(jobs)} jobs" + (f"\nevery job: {' '.join(common)}" if common else "")
    table = Table(title=title, title_justify="left")
    for column in ("job", "overrides", "status", "best val loss", "tokens/s", "time", "error"):
        numeric = column in ("job", "best val loss", "tokens/s", "time")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "error",
                         overflow="fold" if column == "error" else "ellipsis",
                         max_width=70 if column == "error" else None)
    for run in jobs:
        summary = run.get("summary") or {}
        start, end = run.get("start_time"), run.get("end_time")
        seconds = end - start if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None
        status = run.get("status", "unknown")
        style = {"completed": "green", "failed": "red", "interrupted": "yellow"}.get(status, "")
        table.add_row(
            str((run.get("sweep") or {}).get("job", "?")),
            " ".join(o for o in run.get("overrides") or [] if o not in common),
            f"[{style}]{status}[/{style}]" if style else status,
            _number(summary.get("best_val_loss"), ".4f"),
            _number(summary.get("tok_per_s"), ",.0f"),
            f"{seconds:.1f} s" if seconds is not None else "-",
            error_line(run) if status != "completed" else "",
        )
    return table


class SweepSummary(Callback):
    """Hydra callback: after the last job, print the sweep's table; exit non-zero if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        # Wide enough for the table when the output goes to a file or a pipe (rich assumes 80 columns there).
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        console.print(summary_table(jobs, sweep_dir))
        failed = [run for run in jobs if run.get("status") != "completed"]
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} sweep jobs did not complete; their run.json files hold "
                  f"the errors (run dirs under {sweep_dir})", file=sys.stderr)
            sys.exit(EXIT_JOB_FAILED)
