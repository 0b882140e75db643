"""``nanogpt-report RUNS_DIR``: the comparison of every run as files: summary.csv and comparison.png, plus
groups.csv and seeds.png when runs repeat a configuration over seeds, and hyperparameters.png when
runs differ in settings (a sweep).

The same numbers and sentences as the viewer's Compare tab (both come from nanogpt_runner.analysis.records),
for a notebook, a paper or a machine without a browser. matplotlib draws real log axes, which the
browser's plots do not have. No torch is imported.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nanogpt_runner.analysis.comparison import compare_notes, seed_groups
from nanogpt_runner.analysis.figures import hyperparameter_figure, plain, save_figure, seed_band_figure
from nanogpt_runner.analysis.records import RunRecord, differing_keys, finite, run_notes, summarize
from nanogpt_runner.analysis.study_report import write_study_files
from nanogpt_runner.fsutil import UnsafeFolder, refuse_symlinks, replacing, write_atomic
from nanogpt_runner.runs.rundir import METRIC, axis_title, summarized

CSV_NAME = "summary.csv"
PNG_NAME = "comparison.png"
GROUPS_CSV_NAME = "groups.csv"
SEEDS_PNG_NAME = "seeds.png"
HYPERPARAMETERS_PNG_NAME = "hyperparameters.png"
# In every folder nanogpt-report made: it may write there again. A folder without it is someone else's.
REPORT_MARK = ".nanogpt-report"
# One column per summarized metric of the registry (nanogpt_runner.runs.rundir.METRICS).
CSV_FIELDS = ["run", "name", "sweep", "status", *(m.summary for m in summarized()), "time_to_target_s",
              "diverged_at", "stop_reason", "group"]
# The numbers a seed group is summarized by (mean, std, min, max over its seeds): those with a better direction.
GROUP_FIELDS = [m.summary for m in summarized() if m.better]


def write_csv(runs: list[RunRecord], path: Path, target: float | None = None) -> Path:
    """One row per run: the summary numbers, then the config keys that differ between the runs."""
    keys = differing_keys(runs)
    with replacing(path) as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS + keys)
        group_of = {run.id: group.label for group in seed_groups(runs) for run in group.runs}
        for run in runs:
            summary = {**summarize(run, target), "group": group_of[run.id]}
            config = run.config
            writer.writerow([run.id] + [summary.get(k) for k in CSV_FIELDS[1:]] + [config.get(k) for k in keys])
    return path


def write_groups_csv(runs: list[RunRecord], path: Path, target: float | None = None) -> Path:
    """One row per seed group (runs that differ only by train.seed, or share run.group): how many runs, their
    seeds, then each number's mean, sample standard deviation, min and max over the runs."""
    summaries = {run.id: summarize(run, target) for run in runs}
    with replacing(path) as f:
        writer = csv.writer(f)
        writer.writerow(["group", "runs", "seeds"] + [f"{field}_{stat}" for field in GROUP_FIELDS
                                                      for stat in ("mean", "std", "min", "max")])
        for group in seed_groups(runs):
            row = [group.label, len(group.runs), " ".join(str(r.config.get("train.seed")) for r in group.runs)]
            for field in GROUP_FIELDS:
                spread = group.stats(lambda r, name=field: summaries[r.id][name])
                row += [spread.mean, spread.std, min(spread.values), max(spread.values)] if spread.n else [None] * 4
            writer.writerow(row)
    return path


def write_png(runs: list[RunRecord], path: Path, target: float | None = None) -> Path:
    """Train and val loss against tokens (log y), then tokens/s and peak memory per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (train_ax, val_ax), (speed_ax, memory_ax) = axes
    for run in runs:
        metrics = run.metrics
        if metrics is None:
            continue
        for ax, lines, field in ((train_ax, metrics.train, "loss"), (val_ax, metrics.eval, "val_loss")):
            points = [r for r in lines if finite(r.get("tokens")) and finite(r.get(field))]
            if points:
                ax.plot([r["tokens"] for r in points], [r[field] for r in points], label=plain(run.label),
                        marker="." if field == "val_loss" else None)
    for ax, field in ((train_ax, "loss"), (val_ax, "val_loss")):
        ax.set(title=METRIC[field].label, xlabel="tokens", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if target is not None:
        val_ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    summaries = [summarize(run, target) for run in runs]
    labels = [plain(run.label) for run in runs]
    for ax, field in ((speed_ax, "tok_per_s"), (memory_ax, "peak_mem_gb")):
        ax.barh(labels, [s[field] if finite(s[field]) else 0.0 for s in summaries])
        ax.set(title=axis_title(METRIC[field]))
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


class ReportFolderError(ValueError):
    """An output folder nanogpt-report may not write into; the message says why and what to pass instead."""


def claim_out_dir(out_dir: Path, force: bool = False) -> None:
    """Make ``out_dir`` the report's folder (marked with REPORT_MARK), or raise ReportFolderError: it is a
    symlink, or holds one, or is a folder with files that nanogpt-report did not write (unless ``force``). A
    runs folder may come from anyone, so RUNS/report may be planted; the report overwrites only its own files."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ReportFolderError(f"{out_dir} is a symlink or not a folder, and a report is never written through one: "
                                f"pass --out with a new folder")
    if out_dir.is_dir():
        ours = (out_dir / REPORT_MARK).is_file() and not (out_dir / REPORT_MARK).is_symlink()
        if not ours and any(out_dir.iterdir()) and not force:
            raise ReportFolderError(f"{out_dir} exists and was not written by nanogpt-report: pass --out with a new "
                                    f"folder, or --force to write the report's files into it")
        try:
            refuse_symlinks(out_dir)
        except UnsafeFolder as err:
            raise ReportFolderError(f"{err} (or pass --out with a new folder)") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / REPORT_MARK, "written by nanogpt-report: it may replace its files here\n")


def write_report(runs: list[RunRecord], out_dir: Path, target: float | None = None, force: bool = False) -> list[Path]:
    """summary.csv and comparison.png; groups.csv and seeds.png when a configuration ran with several seeds;
    hyperparameters.png when the runs differ in settings. ``out_dir`` must be claimable (``claim_out_dir``)."""
    out_dir = Path(out_dir)
    claim_out_dir(out_dir, force)
    paths = [write_csv(runs, out_dir / CSV_NAME, target), write_png(runs, out_dir / PNG_NAME, target)]
    if any(len(group.runs) > 1 for group in seed_groups(runs)):
        paths.append(write_groups_csv(runs, out_dir / GROUPS_CSV_NAME, target))
        save_figure(seed_band_figure(runs, "tokens"), out_dir / SEEDS_PNG_NAME)
        paths.append(out_dir / SEEDS_PNG_NAME)
    if (figure := hyperparameter_figure(runs)) is not None:
        save_figure(figure, out_dir / HYPERPARAMETERS_PNG_NAME)
        paths.append(out_dir / HYPERPARAMETERS_PNG_NAME)
    return paths + write_study_files(runs, out_dir, target)  # a study sweep's card (docs/studies.md)


def notes_text(runs: list[RunRecord], target: float | None = None) -> str:
    lines = []
    for run in runs:
        lines.append(f"{run.label} ({run.status})")
        lines += [f"  - {note}" for note in run_notes(run)]
    across = compare_notes(runs, target)
    if across:
        lines.append("across runs")
        lines += [f"  - {note}" for note in across]
    return "\n".join(lines)
