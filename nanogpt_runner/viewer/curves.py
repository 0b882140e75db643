"""Curves for the browser: smoothed, downsampled on the server, in the long format gr.LinePlot wants.

gr.LinePlot ships every row to the browser (40k rows is about a megabyte and a second), so each
series is cut to at most ``MAX_POINTS`` here. Min/max buckets keep the shape (spikes survive), and
bucket edges sit at fixed multiples of a power-of-two width counted from the first point, so a
growing run keeps the same points for its old buckets: curves do not wobble between refreshes.
The newest point is always kept.

Every curve panel draws one metric (train and validation loss are two panels), and a series is a run:
``legend_name`` names it the same in every panel and bar, and every panel and bar lists the runs in one
order (``in_run_order``), so a run has one colour everywhere and the legend one entry per run.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nanogpt_runner.analysis.records import X_AXES, RunRecord, diverged_at
from nanogpt_runner.runs.rundir import EVENT, Metric, axis_title, plots

MAX_POINTS = 400
# A panel per plotted metric of the registry (nanogpt_runner.runs.rundir.METRICS), in its order; a plot of several
# metrics (train and val loss) becomes panels named by each metric, so each run keeps one colour in all.
PLOTS: dict[str, Metric] = {metric.name: metric for metrics in plots().values() for metric in metrics}
COLUMNS = ["x", "y", "series"]


def legend_name(run: RunRecord) -> str:
    """The run's name in every legend and bar: its label, marked when its loss diverged (a divergence is never
    a silent gap in a curve)."""
    return f"{run.label} ✗ diverged" if diverged_at(run) is not None else run.label


def in_run_order(runs: list[RunRecord]) -> list[RunRecord]:
    """The order every plot and bar lists runs in. The page colours series by their order of appearance
    (Vega's category scheme), so listing every run in one order everywhere gives each run one colour."""
    return sorted(runs, key=lambda run: run.id)


def panel(frames: list[pd.DataFrame], runs: list[RunRecord]) -> pd.DataFrame:
    """One panel's table: each run's frame in ``in_run_order``, a run with no point in this panel (no eval yet)
    as one empty point, so it keeps its place, and so its colour, in the legend."""
    by_id = dict(zip((run.id for run in runs), frames, strict=True))
    parts = [by_id[run.id] if len(by_id[run.id]) else pd.DataFrame({"x": [np.nan], "y": [np.nan],
                                                                     "series": [legend_name(run)]})
             for run in in_run_order(runs)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def group_name(run: RunRecord, key: str) -> str:
    """"optimizer.lr=0.001": the series a run belongs to when the plots are grouped by a config key."""
    return f"{key}={run.config.get(key)}"


def grouped_panel(frames: list[pd.DataFrame], runs: list[RunRecord], key: str,
                  points: int = MAX_POINTS) -> pd.DataFrame:
    """One series per value of config ``key`` (W&B's "group by"): the mean of its runs' curves on a common x
    grid, each run interpolated inside its own x range only. Groups are listed in sorted order, each in every
    panel (one empty point where it has none), so a group has one colour everywhere."""
    members: dict[str, list[pd.DataFrame]] = {}
    for run, frame in zip(runs, frames, strict=True):
        members.setdefault(group_name(run, key), []).append(frame.dropna(subset=["x", "y"]).sort_values("x"))
    parts = []
    for name in sorted(members):
        curves = [f for f in members[name] if len(f)]
        if not curves:
            parts.append(pd.DataFrame({"x": [np.nan], "y": [np.nan], "series": [name]}))
            continue
        grid = np.unique(np.linspace(min(f.x.min() for f in curves), max(f.x.max() for f in curves), points))
        ys = np.stack([np.interp(grid, f.x, f.y, left=np.nan, right=np.nan) for f in curves])
        with np.errstate(invalid="ignore"):
            counted = np.isfinite(ys).sum(axis=0)
            mean = np.where(counted > 0, np.nansum(ys, axis=0) / np.maximum(counted, 1), np.nan)
        parts.append(pd.DataFrame({"x": grid, "y": mean, "series": name}).dropna(subset=["y"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def downsample(y: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of the points to keep: per bucket the min and the max, plus the first and last point."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    buckets_allowed = max((max_points - 2) // 2 - 1, 1)  # two points each; one more for the partial bucket
    width = 1 << math.ceil(math.log2(math.ceil(n / buckets_allowed)))
    full = (n // width) * width
    low, high = _fill(y, np.inf), _fill(y, -np.inf)  # non-finite points are never a bucket's extreme
    base = np.arange(0, full, width)
    keep = [base + low[:full].reshape(-1, width).argmin(axis=1), base + high[:full].reshape(-1, width).argmax(axis=1)]
    if full < n:
        keep.append(full + np.array([low[full:].argmin(), high[full:].argmax()]))
    keep.append(np.array([0, n - 1]))
    return np.unique(np.concatenate(keep))


def _fill(values: np.ndarray, value: float) -> np.ndarray:
    return np.where(np.isfinite(values), values, value)


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (no pull towards zero at the start).

    That is pandas' ``ewm(adjust=True)``: each point is the w**age-weighted mean of the points so far.
    Non-finite values pass through unchanged and do not poison the average after them.
    """
    if weight <= 0 or len(values) == 0:
        return values
    finite = np.isfinite(values)
    smooth = pd.Series(np.where(finite, values, np.nan)).ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean()
    return np.where(finite, smooth.to_numpy(), values)


def series(run: RunRecord, kind: str, field: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays of one field of a run's train or eval lines, rows without a numeric x left out."""
    frame = run.frame(kind)
    xs, ys = frame[x].to_numpy(), frame[field].to_numpy()
    keep = np.isfinite(xs)
    return xs[keep], ys[keep]


def curve_frame(runs: list[RunRecord], metric: str, x: str = "step", smoothing: float = 0.0,
                log_y: bool = False, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """One long table (x, y, series) for one plot of these runs."""
    frames = [run_frame(run, metric, x, smoothing, log_y, max_points) for run in runs]
    return join(frames)


def join(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def plot_title(plot: str) -> str:
    return axis_title(PLOTS[plot])


def log_scaled(plot: str) -> bool:
    """Whether the log10 checkbox applies to this plot (it does to the losses)."""
    return PLOTS[plot].log_scale


def run_frame(run: RunRecord, plot: str, x: str = "step", smoothing: float = 0.0, log_y: bool = False,
              max_points: int = MAX_POINTS) -> pd.DataFrame:
    """One run's series in one panel, smoothed, then downsampled. Non-finite points are dropped from the
    drawing (a line cannot show them); the series' name says when the run diverged."""
    if run.metrics is None:
        return pd.DataFrame(columns=COLUMNS)
    metric = PLOTS[plot]
    xs, ys = series(run, _line_kind(metric), metric.name, X_AXES[x])
    if not len(ys):
        return pd.DataFrame(columns=COLUMNS)
    if metric.smooth:
        ys = ema(ys, smoothing)
    keep = downsample(ys, max_points)
    xs, ys = xs[keep], ys[keep]
    shown = np.isfinite(ys) & (ys > 0) if log_y else np.isfinite(ys)
    xs, ys = xs[shown], ys[shown]
    return pd.DataFrame({"x": xs, "y": np.log10(ys) if log_y else ys, "series": legend_name(run)})


def _line_kind(metric: Metric) -> str:
    """The kind of line a curve is drawn from: the first of train and eval that carries the metric."""
    return next(kind for kind in metric.kinds if kind != EVENT)
