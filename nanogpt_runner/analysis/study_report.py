"""A study's card as files (``nanogpt-report SWEEP_DIR``: study.md, study.csv, study.png) and as figures.

Technique card: per arm, the tokens/s and peak-memory ratios against the baseline with their 95% intervals
(a dotted line at 1x) beside the speed-noise band, and the val loss difference with its interval beside the
seed-noise band. Scaling card:
each budget's isoFLOP curve (final val loss against parameters, its fitted minimum marked) and the
compute-optimal parameters and tokens against compute. matplotlib's object API, no pyplot state; no torch.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nanogpt_runner.analysis.figures import plain, save_figure
from nanogpt_runner.analysis.records import RunRecord
from nanogpt_runner.analysis.study import (
    TECHNIQUES,
    Interval,
    ScalingCard,
    TechniqueCard,
    scaling_card,
    study_kind,
    technique_card,
)
from nanogpt_runner.fsutil import replacing, write_atomic

STUDY_FILES = ("study.md", "study.csv", "study.png")


def write_study_files(runs: list[RunRecord], out_dir: Path, target: float | None = None) -> list[Path]:
    """study.md (the card), study.csv (its numbers) and study.png when the runs are a study; else nothing."""
    kind = study_kind(runs)
    if kind is None:
        return []
    card = technique_card(runs, target) if kind == TECHNIQUES else scaling_card(runs)
    markdown, table, figure = (Path(out_dir) / name for name in STUDY_FILES)
    write_atomic(markdown, card.markdown())  # each file replaced, never written through a planted symlink
    rows = card.rows()
    with replacing(table) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["arm"])
        writer.writeheader()
        writer.writerows(rows)
    save_figure(technique_figure(card) if kind == TECHNIQUES else scaling_figure(card), figure)
    return [markdown, table, figure]


def technique_figure(card: TechniqueCard) -> Figure:
    """Speed and memory ratios with error bars, loss deltas with intervals and the seed-noise band."""
    arms = [arm for arm in card.arms if arm.status == "measured"]
    fig = Figure(figsize=(13, 0.5 * max(len(arms), 3) + 1.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    names = [plain(arm.arm) for arm in arms]
    panels = ((axes[0], "tokens/s ratio (arm / baseline)", [a.speed for a in arms], 1.0),
              (axes[1], "peak memory ratio (measured)", [a.memory for a in arms], 1.0),
              (axes[2], "val loss Δ at equal tokens", [a.loss_delta for a in arms], 0.0))
    for ax, title, intervals, reference in panels:
        _bars(ax, names, intervals)
        ax.axvline(reference, color="grey", linestyle=":", linewidth=1)
        ax.set(title=title)
        ax.grid(True, axis="x", alpha=0.3)
    for ax, noise, centre, label in ((axes[0], [a.speed_noise for a in arms], 1.0, "speed noise"),
                                     (axes[2], [a.loss_noise for a in arms], 0.0, "seed noise")):
        ax.barh(names, [2 * n if np.isfinite(n) else 0.0 for n in noise],
                left=[centre - n if np.isfinite(n) else centre for n in noise], color="grey", alpha=0.2, label=label)
    estimates = [a.memory_estimate if a.memory_estimate is not None else np.nan for a in arms]
    axes[1].scatter(estimates, names, marker="x", color="black", label="estimate", zorder=3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].invert_yaxis()
    arms_text = f"{len(arms)} arm{'s' if len(arms) != 1 else ''}"
    fig.suptitle(f"technique study: {arms_text} against baseline, paired by seed (95% intervals)", fontsize=10)
    return fig


def _bars(ax, names: list[str], intervals: list[Interval | None]) -> None:
    means = [i.mean if i is not None else np.nan for i in intervals]
    errors = [i.half_width if i is not None and np.isfinite(i.half_width) else 0.0 for i in intervals]
    ax.errorbar(means, names, xerr=errors, fmt="o", capsize=3)


def scaling_figure(card: ScalingCard) -> Figure:
    """Left: final val loss against parameters per budget, fitted minima starred. Right: the compute-optimal
    parameters and tokens against compute (log-log) with the fitted power laws."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    curves_ax, laws_ax = fig.subplots(1, 2)
    for curve in card.curves:
        params = [p for p, _, _ in curve.points]
        line, = curves_ax.plot(params, [loss for _, _, loss in curve.points], marker="o",
                               label=f"{curve.budget:.2g} FLOPs" + (" (untrusted)" if curve.trust else ""))
        if curve.params_opt is not None:
            curves_ax.plot([curve.params_opt], [curve.loss_opt], marker="*", markersize=14, color=line.get_color())
    curves_ax.set(xscale="log", xlabel="parameters", ylabel="final val loss", title="isoFLOP curves")
    trusted = [c for c in card.curves if c.params_opt is not None and not c.trust]
    compute = np.array([c.budget for c in trusted])
    for law, values, marker in ((card.params_law, [c.params_opt for c in trusted], "o"),
                                (card.tokens_law, [c.tokens_opt for c in trusted], "s")):
        laws_ax.scatter(compute, values, marker=marker, label=plain(law.what))
        if law.exponent is not None and len(compute):
            xs = np.geomspace(compute.min(), compute.max(), 20)
            laws_ax.plot(xs, law.coefficient * xs**law.exponent, linestyle="--",
                         label=f"∝ C^{law.exponent:.2f}")
    laws_ax.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", title="compute-optimal size and tokens")
    for ax in (curves_ax, laws_ax):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig
