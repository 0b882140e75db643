"""One run in numbers and in plain words: did it work, how fast, at what cost?

A ``RunRecord`` turns a run directory's metrics lines into numeric columns once per change; ``summarize``
gives the numbers the runs table, the CSV and the sweep summary show, and ``run_notes`` the sentences.
Questions across runs (which did best, is a difference larger than the seed noise) are comparison.py's.
The viewer and ``nanogpt-report`` both ask through these two modules, so they give the same answers. It
depends on runs.py alone and imports no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nanogpt_runner.analysis.naming import name_runs
from nanogpt_runner.config.schema import flatten
from nanogpt_runner.runs.rundir import (
    EVAL,
    MAX_EXACT_INT,
    TRAIN,
    Metric,
    RunMetrics,
    RunReader,
    effective_status,
    find_runs,
    metric_names,
    summarized,
)

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: nanogpt-run imports this module (through the
    # sweep summary) and need not pay pandas's import before every run

# Keys that say where or how a run was stored, not what it trained: never a "difference" between runs.
IGNORED_KEY_PREFIXES = ("run.", "data.cache_dir", "data.url", "data.download_timeout_s", "data.num_proc", "sweep.",
                        "resume", "study.")
# The x axes curves are drawn against: name -> the column of the train and eval lines, and its title.
X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed_s", "flops": "flops"}
X_TITLES = {"step": "step", "tokens": "tokens", "time": "wall time (s)", "flops": "FLOPs (tokens x FLOPs per token)"}
# Settings whose cost in time and memory is the point of comparing runs; listed first when they differ.
LEVERS = {"train.recompute": "recompute", "train.grad_accum": "grad_accum", "train.precision": "precision",
          "train.compile": "compile", "parallel.name": "layout", "parallel.nproc_per_node": "processes"}
LEVER_ORDER = list(LEVERS)
# The kinds of line that become tables (RunRecord.frame), and the loss whose NaN marks a divergence.
LOSS_FIELD = {TRAIN: "loss", EVAL: "val_loss"}
NO_LINES: tuple = ()  # the lines of a run whose metrics are not read (one object, so its frame is cached)


@dataclass
class RunRecord:
    """One run as the analysis sees it: its run.json, and its metrics when they have been read.

    ``metrics`` is None until someone needed the curves (the viewer lists 10,000 runs from run.json
    and the last metrics line alone); ``last_train`` is that newest train line.
    """

    id: str
    path: Path
    info: dict
    metrics: RunMetrics | None = None
    last_train: dict | None = None
    display_name: str = ""  # what analysis.naming.run_names calls it (a sweep job by its overrides); "" : not named
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def frame(self, kind: str) -> pd.DataFrame:
        """The train or eval lines as numeric columns (NaN where a value is absent or not a number),
        plus ``diverged``: the line's loss was written as NaN/inf (an absent loss is not a divergence).

        The columns are the registered fields of the kind (runs.METRICS), then any other field with a
        number in it: a metric the registry does not know yet is kept, not dropped. Built once per
        change of the metrics, so the table, the notes and the plots of a run with 5,000 lines share
        one conversion; every analysis below is column arithmetic on it. A growing run converts only its
        new lines: RunMetrics appends to the same list (a resume or a reset makes a new one), so when the list
        is the one converted before and only longer, the new rows are converted and appended.
        """
        lines = getattr(self.metrics, kind) if self.metrics is not None else NO_LINES
        flops_per_token = as_number(self.info.get("flops_per_token"))
        flops_per_token = flops_per_token if finite(flops_per_token) else None  # None: not known (FLOPs are NaN)
        cached = self._cache.get(kind)  # (the list converted, its length then, flops per token, frame)
        if cached is not None and cached[0] is lines and cached[1] == len(lines) and cached[2] == flops_per_token:
            return cached[3]
        frame = None
        if cached is not None and cached[0] is lines and cached[1] < len(lines) and cached[2] == flops_per_token:
            frame = self._appended(cached[3], lines[cached[1]:], kind, flops_per_token)
        if frame is None:
            frame = self._converted(lines, kind, metric_names(kind), flops_per_token)
        self._cache[kind] = (lines, len(lines), flops_per_token, frame)
        return frame

    def _converted(self, lines: list[dict], kind: str, columns: list[str],
                   flops_per_token: float | None) -> pd.DataFrame:
        """``lines`` as a frame with ``columns`` first, then any other field holding a number."""
        import pandas as pd

        others = set().union(*lines) - set(columns) - {"kind"}  # "kind" is a text on every line (rundir)
        columns = columns + sorted(k for k in others if any(as_number(line.get(k)) is not None for line in lines))
        frame = pd.DataFrame.from_records(lines, columns=columns) if lines else pd.DataFrame(
            columns=columns, dtype=float)
        frame = frame.apply(pd.to_numeric, errors="coerce").astype(float)
        if "tokens" in frame:  # compute spent: tokens x the model's training FLOPs per token (run.json)
            frame["flops"] = frame.tokens * (flops_per_token or math.nan)
        loss = LOSS_FIELD[kind]
        frame["diverged"] = np.array([_non_finite(line.get(loss)) for line in lines], dtype=bool)
        return frame

    def _appended(self, frame: pd.DataFrame, new: list[dict], kind: str,
                  flops_per_token: float | None) -> pd.DataFrame | None:
        """``frame`` with the ``new`` lines converted below it; None when they bring a numeric field the frame
        has no column for (the caller converts everything again)."""
        import pandas as pd

        columns = [c for c in frame.columns if c not in ("flops", "diverged")]
        known = set(columns)
        if any(k not in known and as_number(v) is not None for line in new for k, v in line.items()):
            return None
        return pd.concat([frame, self._converted(new, kind, columns, flops_per_token)], ignore_index=True)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or Path(self.id).name)

    @property
    def status(self) -> str:
        return effective_status(self.info)

    @property
    def sweep(self) -> str:
        """The sweep folder (relative to the runs root) for a sweep job, "" for a single run."""
        return str(Path(self.id).parent) if self.info.get("sweep") else ""

    @property
    def label(self) -> str:
        """A short name that tells runs apart in legends: its ``display_name`` once named (naming.run_names),
        else the run folder, or sweep time/job and name."""
        if self.display_name:
            return self.display_name
        if self.sweep:
            return f"{Path(self.id).parent.name}/{Path(self.id).name} {self.name}"
        return Path(self.id).name

    def settings(self) -> frozenset[tuple[str, str]]:
        """(key, repr of value) for each meaningful config key whose value is not None, kept while run.json is the
        same: runs differ in a key exactly when these pairs do (a missing key and a None value are alike)."""
        cached = self._cache.get("settings")
        if cached is None or cached[0] is not self.info:
            pairs = frozenset((k, repr(v)) for k, v in self.config.items() if v is not None and meaningful(k))
            same = cached is not None and cached[1] == pairs  # a running run rewrites run.json, rarely its config
            cached = (self.info, cached[1] if same else pairs)
            self._cache["settings"] = cached
        return cached[1]

    @property
    def config(self) -> dict:
        """run.json's resolved config, flattened to dotted keys (a copy: callers may change it)."""
        cached = self._cache.get("config")
        if cached is None or cached[0] is not self.info:
            config = self.info.get("config")
            cached = (self.info, flatten(config) if isinstance(config, dict) else {})
            self._cache["config"] = cached
        return dict(cached[1])


def load_runs(root: Path) -> list[RunRecord]:
    """Every run under ``root`` with its metrics read and its name (naming.run_names), oldest first (for reports;
    the viewer reads lazily)."""
    root = Path(root)
    records = []
    for path in find_runs(root):
        reader = RunReader(path)
        reader.refresh()
        if reader.info:
            train = reader.metrics.train
            records.append(RunRecord(str(path.relative_to(root)), path, reader.info, reader.metrics,
                                     train[-1] if train else None))
    name_runs(records)  # sweep jobs by their overrides, as the viewer names them
    return sorted(records, key=lambda r: (as_number(r.info.get("start_time")) or 0.0, r.id))


def meaningful(key: str) -> bool:
    return not key.startswith(IGNORED_KEY_PREFIXES)


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose values are not all equal across ``records``: levers first, then alphabetical."""
    return list(_differing(tuple(r.settings() for r in records)))


@functools.lru_cache(maxsize=16)
def _differing(settings: tuple[frozenset[tuple[str, str]], ...]) -> tuple[str, ...]:
    """``differing_keys`` of these runs' settings, remembered: the viewer asks it of the same runs at every refresh
    (each run's settings keep their identity while its config is the same, and a frozenset keeps its hash)."""
    common = frozenset.intersection(*settings) if settings else frozenset()
    differ = {key for own in settings for key, _ in own - common}
    return tuple(sorted(differ, key=lambda k: (k not in LEVERS, LEVER_ORDER.index(k) if k in LEVERS else 0, k)))


# ---------------------------------------------------------------------------------------------------
# One run in numbers


def summarize(record: RunRecord, target: float | None = None) -> dict:
    """The numbers the runs table and the CSV show for one run: one per summarized metric of the
    registry (runs.METRICS), then the time to ``target`` and the step of a divergence.

    From the metrics when they are loaded, else from the newest train line; a finished run's own
    summary in run.json wins where it has a value, since the trainer measured it best.
    """
    info, last = record.info, record.last_train or {}
    out = {"name": record.name, "sweep": record.sweep, "status": record.status}
    out.update({m.summary: as_number(last.get(m.name)) for m in summarized()})
    out.update(time_to_target_s=None, diverged_at=None)
    if record.metrics is not None:
        out.update({m.summary: _aggregate(record, m) for m in summarized()})
        out.update(time_to_target_s=time_to_target(record, target), diverged_at=diverged_at(record))
    summary = info.get("summary")
    if isinstance(summary, dict):
        for metric in summarized():
            out[metric.summary] = _first(summary.get(metric.summary), out[metric.summary])
        out["last_train_loss"] = _first(summary.get("final_train_loss"), out["last_train_loss"])
    stop = summary.get("stop_reason") if isinstance(summary, dict) else None
    out["stop_reason"] = stop if isinstance(stop, str) else None  # the limit or early stop that ended the run
    if out["steps"] is None:
        out["steps"] = as_number(info.get("step"))
    out["start_time"] = as_number(info.get("start_time"))
    return out


def _aggregate(record: RunRecord, metric: Metric):
    """One metric's summary number from the run's train and eval lines (None when it has no finite value)."""
    columns = [record.frame(kind)[metric.name].to_numpy() for kind in (TRAIN, EVAL) if kind in metric.kinds]
    if not columns:
        return None
    if metric.aggregate == "last":  # NaN included: a diverged run's last loss is NaN
        return float(columns[0][-1]) if len(columns[0]) else None
    if metric.aggregate == "steady":  # the first window holds start-up (allocation, compile)
        return finite_stat(columns[0][1:] if len(columns[0]) > 1 else columns[0], "median")
    how = "min" if metric.aggregate == "best" and metric.better == "lower" else "max"
    value = finite_stat(np.concatenate(columns), how)
    whole = value is not None and metric.decimals == 0 and abs(value) <= MAX_EXACT_INT  # 1e20 steps stay a float
    return int(value) if whole else value


def time_to_target(record: RunRecord, target: float | None) -> float | None:
    """Seconds from the start to the first evaluation whose val loss is at or below ``target``."""
    if target is None:
        return None
    evals = record.frame("eval")
    reached = evals.elapsed_s[evals.val_loss <= target]
    return float(reached.iloc[0]) if len(reached) else None


def diverged_at(record: RunRecord) -> int | None:
    """The first step with a NaN/inf loss (or a "nan" event); None when the run never diverged. Asked by every
    legend, bar and summary of a run: kept until its frames or events change."""
    frames = [record.frame(kind) for kind in LOSS_FIELD]
    events = record.metrics.events if record.metrics is not None else []
    key = (*(id(frame) for frame in frames), id(events), len(events))
    cached = record._cache.get("diverged_at")
    if cached is not None and cached[0] == key:
        return cached[1]
    steps = [frame.step.to_numpy()[frame.diverged.to_numpy()].min(initial=math.inf) for frame in frames]
    steps += [e.get("step") for e in events if e.get("event") == "nan"]
    steps = [s for s in steps if finite(s)]
    found = int(min(steps)) if steps else None
    record._cache["diverged_at"] = (key, found, frames, events)  # the objects kept alive: their ids stay theirs
    return found


# ---------------------------------------------------------------------------------------------------
# One run in words


def run_notes(record: RunRecord, summary: dict | None = None) -> list[str]:
    """What one run did, one sentence each: trend, generalization, throughput, and what it cost.

    ``summary`` is ``summarize(record)`` when the caller already has it.
    """
    notes = []
    if record.metrics is not None:
        notes += _trend_notes(record)
        notes += _overfit_notes(record)
        notes += _throughput_notes(record)
    notes.append(_cost_note(record, summary or summarize(record)))
    return notes + _speed_choice_notes(record.info)


STOPS = {  # summary.stop_reason -> how the run ended, in words ({target} etc. from the run's config)
    "max_iters": "finished its {steps} steps",
    "max_tokens": "stopped: token budget ({max_tokens:,}) spent at step {steps}",
    "max_flops": "stopped: FLOPs budget ({max_flops:.3g}) spent at step {steps}",
    "max_time_s": "stopped: time budget ({max_time_s:g} s) spent at step {steps}",
    "target_loss": "stopped: target {target_loss:g} reached at step {steps}",
    "early_stop_patience": "stopped early: no new best val loss in {early_stop_patience} evals (step {steps})",
    "divergence_factor": "stopped: val loss rose above {divergence_factor:g}x its best at step {steps}",
}
MAX_ERROR_CHARS = 120


def ending(record: RunRecord, summary: dict | None = None) -> str:
    """Why the run ended, in a few words ("stopped: target 1.5 reached at step 840", "failed: non-finite loss at
    step 2"); "" while it is still going. ``summary`` is ``summarize(record)`` when the caller has it."""
    summary = summary or summarize(record)
    status = record.status
    if status in ("running", "queued", "stalled"):
        return ""
    if summary["diverged_at"] is not None and status != "completed":
        return f"{status}: non-finite loss at step {summary['diverged_at']}"
    if status != "completed":
        reason = _error_line(record.info.get("error"))
        return f"{status}: {reason}" if reason else status
    reason = summary.get("stop_reason") or "max_iters"
    train = {k.removeprefix("train."): v for k, v in record.config.items() if k.startswith("train.")}
    try:
        return STOPS[reason].format(steps=_whole(summary["steps"]), **train)
    except (KeyError, TypeError, ValueError):  # an unknown reason, or the config lacks the number
        return f"stopped: {reason} at step {_whole(summary['steps'])}"


def _error_line(error) -> str:
    """The gist of run.json's error: its last line without the exception's class name, cut to one clause."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[-1].split(": ", 1)[-1] if lines[-1].split(": ", 1)[0].isidentifier() else lines[-1]
    text = text.split(" (")[0].split("; ")[0]
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def _whole(value) -> str:
    return f"{int(value):,}" if finite(value) else "?"


def _speed_choice_notes(info: dict) -> list[str]:
    """How the run chose how to compute: train.plan=auto's winner, precision=auto's measured step times."""
    notes = []
    plan = info.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("winner"), list):
        winner = " ".join(o for o in plan["winner"] if isinstance(o, str))
        candidates = plan.get("candidates") if isinstance(plan.get("candidates"), list) else []
        timed = sum(1 for c in candidates if isinstance(c, dict) and c.get("status") == "measured")
        speed = plan.get("tok_per_s")
        rate = f", {speed:,.0f} tokens/s" if isinstance(speed, (int, float)) and finite(speed) else ""
        notes.append(f"plan: trained with {winner} (the fastest of {timed} timed candidates{rate}).")
    probe = info.get("precision_probe")
    if isinstance(probe, dict) and isinstance(probe.get("choice"), str) and isinstance(probe.get("step_ms"), dict):
        times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in probe["step_ms"].items()
                          if isinstance(ms, (int, float)) and finite(ms))
        notes.append(f"precision=auto chose {probe['choice']}" + (f" ({times} per step)." if times else "."))
    return notes


def _trend_notes(record: RunRecord) -> list[str]:
    step = diverged_at(record)
    if step is not None:
        return [f"diverged: the loss became non-finite (NaN/inf) at step {step}."]
    train = record.frame("train")
    points = train[np.isfinite(train.loss) & np.isfinite(train.step)]
    if len(points) < 4:
        return [f"too early to judge the trend: {len(points)} train loss points so far."]
    window = max(2, len(points) // 5)
    before = float(points.loss.iloc[-2 * window:-window].mean())
    recent = float(points.loss.iloc[-window:].mean())
    span = int(points.step.iloc[-1] - points.step.iloc[-window])
    change = (before - recent) / abs(before) if before else 0.0
    if change > 0.01:
        return [f"converging: train loss fell {change:.1%} over the last {span} steps ({before:.3f} → {recent:.3f})."]
    if change < -0.05:
        return [f"getting worse: train loss rose {-change:.1%} over the last {span} steps ({before:.3f} → "
                f"{recent:.3f}); a lower learning rate or more warm-up usually helps."]
    return [f"plateaued: train loss moved {abs(change):.1%} over the last {span} steps (≈{recent:.3f}); more "
            f"steps at this learning rate will not buy much."]


def _overfit_notes(record: RunRecord) -> list[str]:
    evals = record.frame("eval")
    evals = evals[np.isfinite(evals.val_loss) & np.isfinite(evals.train_loss)]
    if len(evals) < 2:
        return []
    last, best = evals.iloc[-1], evals.loc[evals.val_loss.idxmin()]
    gap = last.val_loss - last.train_loss
    if best.step < last.step and last.val_loss > best.val_loss * 1.02:
        return [f"overfitting: val loss rose from {best.val_loss:.3f} at step {best.step:.0f} to "
                f"{last.val_loss:.3f} at step {last.step:.0f} while train loss is {last.train_loss:.3f}; "
                f"the step-{best.step:.0f} checkpoint is the one to keep (or add dropout)."]
    if gap > 0.1 * abs(last.train_loss):
        return [f"val–train gap {gap:.3f} ({gap / abs(last.train_loss):.0%} of train loss): it fits the "
                f"training text noticeably better than held-out text."]
    return [f"generalizing: val loss {last.val_loss:.3f} tracks train loss {last.train_loss:.3f} (gap {gap:+.3f})."]


def _throughput_notes(record: RunRecord) -> list[str]:
    rates = record.frame("train").tok_per_s.iloc[1:]  # the first window holds start-up (allocation, compile)
    rates = rates[np.isfinite(rates) & (rates > 0)]
    if len(rates) < 3:
        return []
    mean = float(rates.mean())
    spread = float(rates.std(ddof=0)) / mean
    if spread < 0.1:
        return [f"throughput stable: {mean:,.0f} tokens/s (±{spread:.0%})."]
    return [f"throughput unstable: {rates.min():,.0f}–{rates.max():,.0f} tokens/s (±{spread:.0%}); another "
            f"job sharing the machine, evaluation or checkpoint pauses are the usual causes."]


def _cost_note(record: RunRecord, s: dict) -> str:
    cfg = record.config
    if isinstance(record.info.get("precision"), str):  # what "auto" resolved to
        cfg["train.precision"] = record.info["precision"]
    settings = ", ".join(f"{word} {cfg[key]}" for key, word in LEVERS.items() if key in cfg)
    settings = settings or "settings unknown (no config in run.json)"
    parts = [f"took {format_duration(s['elapsed_s'])}"]
    if finite(s["tok_per_s"]):
        parts.append(f"{s['tok_per_s']:,.0f} tokens/s")
    if finite(s["peak_mem_gb"]):
        parts.append(f"peak memory {s['peak_mem_gb']:.2f} GB")
    if finite(s["mfu"]):
        parts.append(f"MFU {s['mfu']:.1%}")
    return f"cost: {', '.join(parts)} with {settings}."


# ---------------------------------------------------------------------------------------------------
# Small helpers


def format_duration(seconds) -> str:
    if not finite(seconds):
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def as_number(value):
    """A JSON value as a float when it is a number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def finite(value) -> bool:
    """A real, finite number (numpy's included; bools and None are not numbers here)."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def finite_stat(values: pd.Series | np.ndarray, how: str) -> float | None:
    """min/max/median of the finite values, None when there are none (numpy's, a tenth of pandas' time)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(getattr(np, how)(values)) if len(values) else None


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _first(*values):
    for value in values:
        if as_number(value) is not None:
            return value
    return None
