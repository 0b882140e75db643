"""Figures for experiments, shared by nanogpt-report (comparison.png) and the viewer's Compare tab (gr.Plot).

Two views the line plots cannot give: a seed group's val loss as its mean with the min–max band of its
seeds (is a difference between two configurations larger than the seeds scatter?), and a sweep's
hyperparameters against its objective (which value of each swept key did best, which jobs failed).
Built on matplotlib's object API (no pyplot state), so a server can draw them from any thread; no torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nanogpt_runner.analysis.comparison import Group, objective_name, objective_value, seed_groups, swept_keys
from nanogpt_runner.analysis.records import X_AXES, X_TITLES, RunRecord, finite
from nanogpt_runner.fsutil import write_atomic
from nanogpt_runner.runs.rundir import EVAL

MAX_LABEL = 60  # characters of a legend or axis label taken from a run folder


def plain(text) -> str:
    """Text from a run folder as a literal matplotlib label: ``$`` would start mathtext (and a malformed
    formula fails the whole figure), so it is escaped; overlong labels are cut."""
    text = str(text)
    text = text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"
    return text.replace("$", r"\$")


STATUS_COLOURS = {"completed": "tab:green", "failed": "tab:red", "interrupted": "tab:orange", "running": "tab:blue"}


def group_curve(group: Group, x: str = "step") -> pd.DataFrame:
    """The group's val loss per evaluation step that every run reached: x (the runs' mean), mean, std, min, max."""
    frames = [run.frame(EVAL)[["step", X_AXES[x], "val_loss"]].set_axis(["step", "x", "val_loss"], axis=1)
              for run in group.runs if X_AXES[x] in run.frame(EVAL)]
    if not frames:
        return pd.DataFrame(columns=["step", "x", "mean", "std", "min", "max"])
    points = pd.concat(frames).dropna()
    stats = points.groupby("step").agg(x=("x", "mean"), mean=("val_loss", "mean"), std=("val_loss", "std"),
                                       min=("val_loss", "min"), max=("val_loss", "max"), n=("val_loss", "size"))
    return stats[stats.n == len(group.runs)].drop(columns="n").reset_index()


def seed_band_figure(records: list[RunRecord], x: str = "step", title: str = "val loss by seed group") -> Figure:
    """Each seed group's mean val loss with its min–max band over the seeds (a single run: its line)."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for group in seed_groups(records):
        curve = group_curve(group, x)
        if curve.empty:
            continue
        label = f"{plain(group.label)} ({len(group.runs)} seed{'s' if len(group.runs) > 1 else ''})"
        line, = ax.plot(curve.x, curve["mean"], marker=".", label=label)
        if len(group.runs) > 1:
            ax.fill_between(curve.x, curve["min"], curve["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(title=title, xlabel=X_TITLES[x], ylabel="val loss")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def hyperparameter_figure(records: list[RunRecord]) -> Figure | None:
    """One panel per swept key: its value against each completed run's objective, coloured by status. Runs
    without a final objective (failed, interrupted, still running) are an x at the top. None: nothing swept."""
    keys = swept_keys(records)
    if not keys:
        return None
    objective = objective_name(records[0])
    values = [objective_value(r) if r.status == "completed" else None for r in records]
    finite_values = [v for v in values if finite(v)]
    top = max(finite_values) if finite_values else 1.0
    fig = Figure(figsize=(min(4 * len(keys), 16), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys), sharey=True))
    for ax, key in zip(axes, keys, strict=True):
        raw = [r.config.get(key) for r in records]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric:
            xs = [float(v) for v in raw]
            if min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
        else:
            categories = sorted({str(v) for v in raw})
            xs = [categories.index(str(v)) for v in raw]
            ax.set_xticks(range(len(categories)), [plain(c) for c in categories], rotation=30, fontsize=7)
        for status in sorted({r.status for r in records}):
            chosen = [i for i, r in enumerate(records) if r.status == status]
            shown = [i for i in chosen if finite(values[i])]
            colour = STATUS_COLOURS.get(status, "tab:gray")
            ax.scatter([xs[i] for i in shown], [values[i] for i in shown], color=colour, label=plain(status), s=24)
            missing = [i for i in chosen if not finite(values[i])]
            ax.scatter([xs[i] for i in missing], [top] * len(missing), color=colour, marker="x", s=40)
        ax.set(xlabel=plain(key))
        ax.grid(True, alpha=0.3)
    axes[0].set(ylabel=plain(objective))
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        axes[-1].legend(list(unique.values()), list(unique), fontsize=7)
    fig.suptitle(f"swept settings against {plain(objective)} (x: no final value: failed, interrupted or running)",
                 fontsize=9)
    return fig


def save_figure(figure: Figure, path: Path) -> None:
    """A figure as a PNG at ``path``, replaced atomically (fsutil.write_atomic: never through a symlink)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
