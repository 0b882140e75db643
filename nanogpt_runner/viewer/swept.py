"""The Compare tab's swept settings: one panel per swept key, its value against each selected run's objective.

Drawn by the page (gr.ScatterPlot, as wide as the page allows, a run's name and numbers on hover), so nothing
here loads matplotlib: a refresh costs a small table per key. A key whose positive values span more than
LOG_SPAN is drawn as its log10 (learning rates); a key of texts or flags is a category axis. A run without a
final objective (failed, interrupted, still running) is drawn above the others, its status saying "no value", as
nanogpt-report's hyperparameters.png marks it; statuses have fixed colours (STATUS_COLOURS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from nanogpt_runner.analysis.comparison import objective_name, objective_value, swept_keys
from nanogpt_runner.analysis.records import RunRecord, finite
from nanogpt_runner.viewer.curves import in_run_order, legend_name

MAX_SWEPT_PANELS = 4  # the page holds this many panels side by side; more keys: the first ones (the seed last)
LOG_SPAN = 20
MAX_VALUE_CHARS = 40  # a category shown on the axis: config texts come from run folders
COLUMNS = ["value", "objective", "run", "status"]
# Each point's colour says how its run ended: every status drawn is one of these (a status a run.json makes up
# is "other"), so the page's colour map covers every point.
STATUS_COLOURS = {"completed": "#54a24b", "completed: no value": "#bab0ac", "failed: no value": "#e45756",
                  "interrupted: no value": "#f58518", "running: no value": "#4c78a8", "other: no value": "#9d755d"}


@dataclass
class SweptPanel:
    key: str  # the config key
    x_title: str  # the key, or "log10 KEY"
    y_title: str  # the objective's name
    frame: pd.DataFrame  # COLUMNS: one row per run


def swept_panels(runs: list[RunRecord], summaries: dict[str, dict]) -> list[SweptPanel]:
    """A panel per key the runs differ in (scalars only, the seed last), at most MAX_SWEPT_PANELS; none for one
    run or nothing swept. ``summaries`` are the runs' ``summarize`` (the objective is read from them)."""
    keys = swept_keys(runs)[:MAX_SWEPT_PANELS] if len(runs) > 1 else []
    if not keys:
        return []
    ordered = in_run_order(runs)
    values = [objective_value(r, summaries[r.id]) if r.status == "completed" else None for r in ordered]
    drawn = [v for v in values if finite(v)]
    top = max(drawn) + 0.1 * (max(drawn) - min(drawn) or abs(max(drawn)) or 1.0) if drawn else 1.0
    common = {"objective": [v if finite(v) else top for v in values],
              "run": [legend_name(r) for r in ordered],
              "status": [_status(r.status, finite(v)) for r, v in zip(ordered, values, strict=True)]}
    objective = objective_name(ordered[0])
    panels = []
    for key in keys:
        xs, x_title = _axis(key, [r.config.get(key) for r in ordered])
        panels.append(SweptPanel(key, x_title, objective, pd.DataFrame({"value": xs, **common}, columns=COLUMNS)))
    return panels


def _status(status: str, has_value: bool) -> str:
    """A point's status, one of STATUS_COLOURS."""
    if has_value:
        return "completed"
    known = status if status in ("completed", "failed", "interrupted") else "running" if status in (
        "running", "queued", "stalled") else "other"
    return f"{known}: no value"


def x_limits(panel: SweptPanel) -> list[float] | None:
    """A number axis reaching a little past its points (a point on the frame's edge is cut in half); None for a
    category axis."""
    values = panel.frame["value"]
    if not len(values) or not all(isinstance(v, float) for v in values):
        return None
    low, high = min(values), max(values)
    margin = 0.05 * (high - low) or 0.5
    return [low - margin, high + margin]


def _axis(key: str, raw: list) -> tuple[list, str]:
    """(x values, axis title): numbers as they are (log10 over a wide positive span), anything else as text."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw):
        numbers = [float(v) for v in raw]
        if min(numbers) > 0 and max(numbers) / min(numbers) > LOG_SPAN:
            return [math.log10(v) for v in numbers], f"log10 {key}"
        return numbers, key
    return [_category(v) for v in raw], key


def _category(value) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"
