"""Sweeps: what each job returns to the sweeper, what re-running a sweep does, and the end-of-sweep table.

A sweep job returns its objective (``sweep.objective``: the best val loss by default) so that a search
sweeper (conf/hydra/sweeper/optuna.yaml) can optimize it; a job that did not complete returns NaN, which
Optuna records as a failed trial. Hydra 1.3's basic launcher aborts a sweep when a job raises, so each
job records its outcome in its run directory and returns; the ``SweepSummary`` callback
(``hydra.callbacks.sweep_summary`` in conf/config.yaml) reads those records once every job has run,
prints the table, and exits non-zero when any job did not complete. It reads run directories only, so it
works the same for the basic, submitit_local and submitit_slurm launchers.

Re-running the same ``-m`` command with the same ``hydra.sweep.dir`` continues the sweep: a job whose
directory holds a completed run is skipped (its record is not touched beyond the note that it was
skipped), an interrupted or failed job continues from its latest checkpoint, or starts over when it has
none. Each job's run.json says which (``sweep.action``), and so does the table.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nanogpt_runner.analysis.comparison import best_run, objective_name, objective_value, seed_groups
from nanogpt_runner.analysis.records import RunRecord, finite, load_runs
from nanogpt_runner.analysis.study import TECHNIQUES, UNSUPPORTED, scaling_card, study_kind, technique_card
from nanogpt_runner.checkpoint.folder import checkpoint_dir, list_checkpoints
from nanogpt_runner.config.schema import OBJECTIVES
from nanogpt_runner.runs.rundir import RUN_FILE, read_run, write_json_atomic

EXIT_JOB_FAILED = 1
EXIT_SWEEP_MISMATCH = 2
# What launching a job did this time, recorded as run.json's sweep.action.
RAN, SKIPPED, RESUMED, RERUN = "ran", "skipped", "resumed", "re-run"


class SweepMismatch(Exception):
    """The sweep directory holds a job with other overrides: this is not the same sweep."""


def previous_attempt(run_dir: Path, overrides: list[str]) -> str:
    """What launching this sweep job does, given what its directory already holds.

    RAN for a new job; SKIPPED when it holds a completed run of the same overrides; RESUMED when an
    unfinished one left a checkpoint (train.resume=auto continues from it); RERUN when it left none.
    Raises SweepMismatch when the directory holds a run of different overrides (another sweep)."""
    previous = read_run(run_dir)
    if previous is None:
        return RAN
    if list(previous.get("overrides") or []) != list(overrides):
        raise SweepMismatch(
            f"{run_dir} holds job {(previous.get('sweep') or {}).get('job', '?')} of another sweep "
            f"({' '.join(previous.get('overrides') or []) or 'no overrides'}), not {' '.join(overrides)}: re-run a "
            f"sweep with the exact command that started it, or give this one a new hydra.sweep.dir")
    if previous.get("status") == "completed":
        return SKIPPED
    return RESUMED if list_checkpoints(checkpoint_dir(run_dir)) else RERUN


def forget_outcome(run_dir: Path) -> None:
    """Before a job runs again: drop the previous attempt's ending (error, end time, summary) from run.json,
    so the record describes the new attempt (the metrics and checkpoints stay: a resume continues them)."""
    record = read_run(run_dir)
    if record is not None:
        for key in ("error", "end_time", "summary"):
            record.pop(key, None)
        write_json_atomic(Path(run_dir) / RUN_FILE, record)


def record_action(run_dir: Path, action: str) -> None:
    """Note in run.json what this launch did with the job; nothing else in the record changes."""
    record = read_run(run_dir)
    if record is None:  # the job was refused before it had a record
        return
    record["sweep"] = {**(record.get("sweep") or {}), "action": action}
    write_json_atomic(Path(run_dir) / RUN_FILE, record)


def job_objective(run_dir: Path) -> float:
    """The number a search sweeper optimizes for this job (its config's ``sweep.objective``).

    NaN when the job did not complete (Optuna then records a failed trial); +inf (-inf when maximizing)
    when it completed without a value, e.g. it never reached the target of ``time_to_target``."""
    records = load_runs(Path(run_dir))
    if not records or records[0].status != "completed":
        return math.nan
    value = objective_value(records[0])
    if finite(value):
        return float(value)
    return -math.inf if OBJECTIVES[objective_name(records[0])] == "maximize" else math.inf


# How each objective's numbers are written in the tables.
OBJECTIVE_FORMATS = {"val_loss": ".4f", "val_bpb": ".4f", "tok_per_s": ",.0f", "time_to_target": ".1f"}


def sweep_jobs(sweep_dir: Path) -> list[RunRecord]:
    """Every job under ``sweep_dir`` with its metrics read, in job order (jobs without a record are skipped)."""
    jobs = load_runs(sweep_dir)
    return sorted(jobs, key=lambda run: ((run.info.get("sweep") or {}).get("job", math.inf), str(run.path)))


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
    return format(value, fmt) if finite(value) else "-"


def _common_overrides(jobs: list[RunRecord]) -> list[str]:
    overrides = [job.info.get("overrides") or [] for job in jobs]
    return [o for o in overrides[0] if all(o in job for job in overrides)] if overrides else []


def summary_table(jobs: list[RunRecord], sweep_dir: Path) -> Table:
    """One row per job: what differs between jobs (the shared overrides are in the title), its status and
    what this launch did with it, its objective (the best one starred), why it stopped, speed and time."""
    common = _common_overrides(jobs)
    objectives = sorted({objective_name(job) for job in jobs}) or ["val_loss"]
    title = f"sweep {sweep_dir}: {len(jobs)} jobs" + (f"\nevery job: {' '.join(common)}" if common else "")
    table = Table(title=title, title_justify="left")
    columns = ("job", "overrides", "status", f"objective ({', '.join(objectives)})", "stop", "tokens/s", "time",
               "error")
    for column in columns:
        numeric = column in ("job", "tokens/s", "time") or column.startswith("objective")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "error",
                         overflow="fold" if column == "error" else "ellipsis",
                         max_width=70 if column == "error" else None)
    best = best_run(jobs)
    for job in jobs:
        run, summary = job.info, job.info.get("summary") or {}
        start, end = run.get("start_time"), run.get("end_time")
        seconds = end - start if finite(start) and finite(end) else None
        status = run.get("status", "unknown")
        style = {"completed": "green", "failed": "red", "interrupted": "yellow", UNSUPPORTED: "dim"}.get(status, "")
        action = (run.get("sweep") or {}).get("action")
        shown = f"[{style}]{status}[/{style}]" if style else status
        table.add_row(
            str((run.get("sweep") or {}).get("job", "?")),
            " ".join(o for o in run.get("overrides") or [] if o not in common),
            f"{shown} ({action})" if action and action != RAN else shown,
            ("★ " if job is best else "") + _number(objective_value(job), OBJECTIVE_FORMATS[objective_name(job)]),
            str(summary.get("stop_reason") or "-"),
            _number(summary.get("tok_per_s"), ",.0f"),
            f"{seconds:.1f} s" if seconds is not None else "-",
            error_line(run) if status != "completed" else "",  # an unsupported study arm: why
        )
    return table


def groups_table(jobs: list[RunRecord]) -> Table | None:
    """Jobs that differ only by train.seed (or share run.group): the objective's mean ± std over the seeds.
    None when no group has two jobs (a sweep without repeated seeds)."""
    groups = seed_groups(jobs)
    if not any(len(group.runs) > 1 for group in groups):
        return None
    table = Table(title="seed groups (jobs that differ only by train.seed, or share run.group)", title_justify="left")
    for column in ("group", "seeds", "objective mean ± std", "min – max"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group in groups:
        stats, fmt = group.stats(objective_value), OBJECTIVE_FORMATS[objective_name(group.runs[0])]
        table.add_row(group.label, str(len(group.runs)), stats.mean_std(fmt), stats.range(fmt))
    return table


def actions_line(jobs: list[RunRecord]) -> str:
    """"this launch: 2 skipped (completed before), 1 resumed from its checkpoint" (empty for a fresh sweep)."""
    counts = {action: sum((job.info.get("sweep") or {}).get("action") == action for job in jobs)
              for action in (SKIPPED, RESUMED, RERUN)}
    words = {SKIPPED: "skipped (completed before)", RESUMED: "resumed from a checkpoint",
             RERUN: "re-run from the start (no checkpoint)"}
    parts = [f"{n} {words[action]}" for action, n in counts.items() if n]
    return f"this launch: {', '.join(parts)}" if parts else ""


def study_card(jobs: list[RunRecord]) -> tuple[Table, list[str]] | None:
    """A study sweep's card (nanogpt_runner.analysis.study) as a table and its sentences; None for other sweeps."""
    kind = study_kind(jobs)
    if kind is None:
        return None
    card = technique_card(jobs) if kind == TECHNIQUES else scaling_card(jobs)
    rows = card.table_rows()
    title = ("technique card: each arm against baseline, paired by seed (ratios arm / baseline, ± 95% interval)"
             if kind == TECHNIQUES else "scaling card: final val loss per FLOP budget and model size")
    table = Table(title=title, title_justify="left")
    for column in rows[0] if rows else ["(no runs)"]:
        table.add_column(column, overflow="fold", max_width=48 if column in ("change", "trust") else None)
    for row in rows:
        table.add_row(*(format(v, ".4g") if isinstance(v, float) else str("-" if v is None else v)
                        for v in row.values()))
    return table, card.sentences()


class SweepSummary(Callback):
    """Hydra callback: after the last job, print the sweep's tables; exit non-zero if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        # Wide enough for the table when the output goes to a file or a pipe (rich assumes 80 columns there).
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        console.print(summary_table(jobs, sweep_dir))
        groups = groups_table(jobs)
        if groups is not None:
            console.print(groups)
        best = best_run(jobs)
        if best is not None:
            common = _common_overrides(jobs)
            differs = " ".join(o for o in best.info.get("overrides") or [] if o not in common)
            name = objective_name(best)
            console.print(f"best: job {(best.info.get('sweep') or {}).get('job', '?')} ({differs or 'the only job'}) "
                          f"with {name} {format(objective_value(best), OBJECTIVE_FORMATS[name])}")
        if line := actions_line(jobs):
            console.print(line)
        if (card := study_card(jobs)) is not None:
            console.print(card[0])
            for sentence in card[1]:
                console.print(f"  - {sentence}", markup=False)
            console.print(f"(nanogpt-report {sweep_dir} writes this card as study.md, study.csv and study.png)")
        failed = [job for job in jobs if job.info.get("status") not in ("completed", UNSUPPORTED)]
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} sweep jobs did not complete; their run.json files hold "
                  f"the errors (run dirs under {sweep_dir})", file=sys.stderr)
            sys.exit(EXIT_JOB_FAILED)
