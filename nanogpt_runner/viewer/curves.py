"""Curves for the browser: smoothed, downsampled on the server, in the long format gr.LinePlot wants.

gr.LinePlot ships every row to the browser (40k rows is about a megabyte and a second), so each
series is cut to at most ``MAX_POINTS`` here. Min/max buckets keep the shape (spikes survive), and
bucket edges sit at fixed multiples of a power-of-two width counted from the first point, so a
growing run keeps the same points for its old buckets: curves do not wobble between refreshes.
The newest point is always kept.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nanogpt_runner.analysis import RunRecord

MAX_POINTS = 400
X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed_s"}
X_TITLES = {"step": "step", "tokens": "tokens", "time": "wall time (s)"}
# metric name -> (kind of metrics line, field, smoothed by the EMA slider)
METRICS = {
    "loss": None,  # train "loss" and eval "val_loss", two series per run
    "lr": ("train", "lr", False),
    "tok_per_s": ("train", "tok_per_s", True),
    "mem_gb": ("train", "mem_gb", False),
}
COLUMNS = ["x", "y", "series"]


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
    """TensorBoard's debiased exponential moving average: no pull towards zero at the start.

    Non-finite values pass through unchanged and do not poison the average after them.
    """
    if weight <= 0 or len(values) == 0:
        return values
    out = np.array(values, dtype=float)
    last, count = 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out[i] = last / (1 - weight**count)
    return out


def series(records: list[dict], field: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays of one field, rows without a numeric x or y left out."""
    xs, ys = [], []
    for record in records:
        xv, yv = record.get(x), record.get(field)
        if _is_number(xv) and _is_number(yv):
            xs.append(xv)
            ys.append(yv)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def curve_frame(runs: list[RunRecord], metric: str, x: str = "step", smoothing: float = 0.0,
                log_y: bool = False, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """One long table (x, y, series) for one plot; a diverged run's series says so in its name.

    Non-finite points are dropped from the drawing (a line cannot show them), which is why the name
    carries the marker: a diverged run is never a silent gap.
    """
    x_field = X_AXES[x]
    frames = []
    for run in runs:
        if run.metrics is None:
            continue
        if metric == "loss":
            parts = [(run.metrics.train, "loss", "train", True), (run.metrics.eval, "val_loss", "val", False)]
        else:
            kind, field, smooth = METRICS[metric]
            parts = [(getattr(run.metrics, kind), field, "", smooth)]
        for lines, field, suffix, smooth in parts:
            xs, ys = series(lines, field, x_field)
            if not len(ys):
                continue
            name = f"{run.label} {suffix}".strip()
            if not np.isfinite(ys).all():
                name += " ✗ diverged"
            if smooth:
                ys = ema(ys, smoothing)
            keep = downsample(ys, max_points)
            xs, ys = xs[keep], ys[keep]
            finite = np.isfinite(ys) & ((ys > 0) if log_y else True)
            xs, ys = xs[finite], ys[finite]
            frames.append(pd.DataFrame({"x": xs, "y": np.log10(ys) if log_y else ys, "series": name}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
