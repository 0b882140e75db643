"""Per-run and cross-run summaries, in numbers and in plain words.

The questions this tool exists for are "did this run work?" and "what did accumulation, recomputation,
precision or a parallel layout cost in time and memory, and what did it do to the loss?". The viewer
and ``nanogpt-report`` ask them through this module so both give the same answers. It depends on
runs.py alone and imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nanogpt_runner.config import OBJECTIVES, flatten
from nanogpt_runner.runs import (
    EVAL,
    TRAIN,
    Metric,
    RunMetrics,
    RunReader,
    effective_status,
    find_runs,
    metric_names,
    summarized,
)

# Keys that say where or how a run was stored, not what it trained: never a "difference" between runs.
IGNORED_KEY_PREFIXES = ("run.", "data.cache_dir", "data.url", "data.download_timeout_s", "data.num_proc", "sweep.",
                        "resume")
# Runs whose configs differ only in this key are one configuration tried with several seeds (a seed group).
SEED_KEY = "train.seed"
# A difference between two seed groups counts as real when it is at least this many standard errors.
SIGNIFICANT_STANDARD_ERRORS = 2.0
# The x axes curves are drawn against: name -> the column of the train and eval lines, and its title.
X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed_s", "flops": "flops"}
X_TITLES = {"step": "step", "tokens": "tokens", "time": "wall time (s)", "flops": "FLOPs (tokens x FLOPs per token)"}
# Where each sweep.objective (config.OBJECTIVES) is found among summarize()'s numbers.
OBJECTIVE_SUMMARY = {"val_loss": "best_val_loss", "val_bpb": "best_val_bpb", "tok_per_s": "tok_per_s",
                     "time_to_target": "time_to_target_s"}
# The budgets two runs are compared at: the x column of the eval lines, and how to say an amount of it.
BUDGETS = {"tokens": "{:,.0f} tokens", "elapsed_s": "{:.1f} s", "flops": "{:.3g} FLOPs"}
# Settings whose cost in time and memory is the point of comparing runs; listed first when they differ.
LEVERS = {"train.recompute": "recompute", "train.grad_accum": "grad_accum", "train.precision": "precision",
          "train.compile": "compile", "parallel.name": "layout", "parallel.nproc_per_node": "processes"}
LEVER_ORDER = list(LEVERS)
# A pair of runs that differ in more keys than this is not a fair comparison of any one of them.
MAX_PAIR_DIFFERENCES = 3
# The kinds of line that become tables (RunRecord.frame), and the loss whose NaN marks a divergence.
LOSS_FIELD = {TRAIN: "loss", EVAL: "val_loss"}


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
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def frame(self, kind: str) -> pd.DataFrame:
        """The train or eval lines as numeric columns (NaN where a value is absent or not a number),
        plus ``diverged``: the line's loss was written as NaN/inf (an absent loss is not a divergence).

        The columns are the registered fields of the kind (runs.METRICS), then any other field with a
        number in it: a metric the registry does not know yet is kept, not dropped. Built once per
        change of the metrics, so the table, the notes and the plots of a run with 5,000 lines share
        one conversion; every analysis below is column arithmetic on it.
        """
        lines = getattr(self.metrics, kind) if self.metrics is not None else []
        key = (id(lines), len(lines), id(lines[-1]) if lines else 0)
        cached = self._cache.get(kind)
        if cached is None or cached[0] != key:
            columns = metric_names(kind)
            columns += sorted({k for line in lines for k, v in line.items()
                               if k not in columns and _number(v) is not None})
            frame = pd.DataFrame.from_records(lines, columns=columns) if lines else pd.DataFrame(
                columns=columns, dtype=float)
            frame = frame.apply(pd.to_numeric, errors="coerce").astype(float)
            if "tokens" in frame:  # compute spent: tokens x the model's training FLOPs per token (run.json)
                frame["flops"] = frame.tokens * (_number(self.info.get("flops_per_token")) or math.nan)
            loss = LOSS_FIELD[kind]
            frame["diverged"] = np.array([_non_finite(line.get(loss)) for line in lines], dtype=bool)
            cached = (key, frame)
            self._cache[kind] = cached
        return cached[1]

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
        """A short name that tells runs apart in legends: the run folder, or sweep time/job and name."""
        if self.sweep:
            return f"{Path(self.id).parent.name}/{Path(self.id).name} {self.name}"
        return Path(self.id).name

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
    """Every run under ``root`` with its metrics read, oldest first (for reports; the viewer reads lazily)."""
    root = Path(root)
    records = []
    for path in find_runs(root):
        reader = RunReader(path)
        reader.refresh()
        if reader.info:
            train = reader.metrics.train
            records.append(RunRecord(str(path.relative_to(root)), path, reader.info, reader.metrics,
                                     train[-1] if train else None))
    return sorted(records, key=lambda r: (_number(r.info.get("start_time")) or 0.0, r.id))


def meaningful(key: str) -> bool:
    return not key.startswith(IGNORED_KEY_PREFIXES)


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose values are not all equal across ``records``: levers first, then alphabetical."""
    configs = [r.config for r in records]
    keys = [k for k in set().union(*configs) if meaningful(k)]
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return sorted(differ, key=lambda k: (k not in LEVERS, LEVER_ORDER.index(k) if k in LEVERS else 0, k))


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
    out.update({m.summary: _number(last.get(m.name)) for m in summarized()})
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
        out["steps"] = _number(info.get("step"))
    out["start_time"] = _number(info.get("start_time"))
    return out


def _aggregate(record: RunRecord, metric: Metric):
    """One metric's summary number from the run's train and eval lines (None when it has no finite value)."""
    columns = [record.frame(kind)[metric.name] for kind in (TRAIN, EVAL) if kind in metric.kinds]
    if not columns:
        return None
    if metric.aggregate == "last":  # NaN included: a diverged run's last loss is NaN
        return float(columns[0].iloc[-1]) if len(columns[0]) else None
    if metric.aggregate == "steady":  # the first window holds start-up (allocation, compile)
        return _finite_stat(columns[0].iloc[1:] if len(columns[0]) > 1 else columns[0], "median")
    how = "min" if metric.aggregate == "best" and metric.better == "lower" else "max"
    value = _finite_stat(pd.concat(columns), how)
    return int(value) if value is not None and metric.decimals == 0 else value


def time_to_target(record: RunRecord, target: float | None) -> float | None:
    """Seconds from the start to the first evaluation whose val loss is at or below ``target``."""
    if target is None:
        return None
    evals = record.frame("eval")
    reached = evals.elapsed_s[evals.val_loss <= target]
    return float(reached.iloc[0]) if len(reached) else None


def diverged_at(record: RunRecord) -> int | None:
    """The first step with a NaN/inf loss (or a "nan" event); None when the run never diverged."""
    steps = [record.frame(kind).step[record.frame(kind).diverged].min() for kind in LOSS_FIELD]
    if record.metrics is not None:
        steps += [e.get("step") for e in record.metrics.events if e.get("event") == "nan"]
    steps = [s for s in steps if finite(s)]
    return int(min(steps)) if steps else None


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
# Across runs


def compare_notes(records: list[RunRecord], target: float | None = None,
                  summaries: dict[str, dict] | None = None) -> list[str]:
    """Which run (or seed group) did best, which got to the target first, how wide each seed group's
    spread is, and what each differing setting changed: in memory and speed, in loss at the end and at
    equal budgets, and whether the loss difference is larger than the seed noise.

    ``summaries`` maps run id to ``summarize(run, target)`` when the caller already has them.
    """
    if len(records) < 2:
        return []
    rows = summaries or {r.id: summarize(r, target) for r in records}
    groups = seed_groups(records)
    metric, label = comparison_metric(records)
    notes = [_best_note(groups, rows, metric, label)] if any(finite(rows[r.id][metric]) for r in records) else []
    if metric != "best_val_loss":
        notes.append(f"compared by {label}: the runs use different tokenizers, whose losses per token do not compare.")
    if target is not None:
        reached = [r for r in records if finite(rows[r.id]["time_to_target_s"])]
        if reached:
            first = min(reached, key=lambda r: rows[r.id]["time_to_target_s"])
            notes.append(f"fastest to val loss ≤ {target:g}: {first.label} in "
                         f"{format_duration(rows[first.id]['time_to_target_s'])} "
                         f"({len(reached)} of {len(records)} runs got there).")
        else:
            notes.append(f"no selected run has reached val loss ≤ {target:g} yet.")
    fast = [r for r in records if finite(rows[r.id]["tok_per_s"])]
    if len(fast) > 1:
        top = max(fast, key=lambda r: rows[r.id]["tok_per_s"])
        notes.append(f"highest throughput: {top.label} at {rows[top.id]['tok_per_s']:,.0f} tokens/s.")
    for group in groups:
        if len(group.runs) > 1:
            loss = group.stats(lambda r: rows[r.id][metric])
            notes.append(f"seed group {group.label}: best {label} {loss.mean_std('.4f')} over {len(group.runs)} "
                         f"seeds (range {loss.range('.4f')}).")
    for base, other, keys in closest_pairs(groups):
        notes.append(_effect_note(base, other, keys, rows, metric, label))
    return notes


def comparison_metric(records: list[RunRecord]) -> tuple[str, str]:
    """The summary column runs are ranked by, and its name: the best val loss while every run has the same
    tokenizer (a loss per token compares only then), else the best val bits per byte, which any two share."""
    tokenizers = {repr([(r.info.get("dataset") or {}).get(k) for k in ("tokenizer", "vocab_size")]) for r in records}
    return ("best_val_loss", "val loss") if len(tokenizers) == 1 else ("best_val_bpb", "val bits per byte")


def _best_note(groups: list[Group], rows: dict[str, dict], metric: str, label: str) -> str:
    """The lowest ``metric``: of a run when each configuration ran once, else of a seed group's mean."""
    def loss(group: Group) -> Spread:
        return group.stats(lambda r: rows[r.id][metric])

    ranked = sorted((g for g in groups if loss(g).n), key=lambda g: loss(g).mean)
    best = ranked[0]
    if all(len(g.runs) == 1 for g in groups):
        name, value = best.runs[0].label, f"{loss(best).mean:.4f}"
    else:
        name, value = f"seed group {best.label}", f"{loss(best).mean_std('.4f')} ({loss(best).n} seeds)"
    if len(ranked) < 2:
        return f"best {label}: {name} with {value}."
    lead = loss(ranked[1]).mean - loss(best).mean
    margin = ", tied with the next" if lead < 5e-5 else f", {lead:.4f} ahead of the next"
    return f"best {label}: {name} with {value}{margin} ({significance(loss(best), loss(ranked[1]))})."


def closest_pairs(groups: list[Group]) -> list[tuple[Group, Group, list[str]]]:
    """For each seed group, its closest other group (fewest differing config keys, the seed aside), as
    (baseline, other, keys).

    The baseline of a pair is the group with the plainer setting (no recomputation, less accumulation,
    one process, fp32), so effects read as "turning X on changed Y". Pairs that differ in more than
    MAX_PAIR_DIFFERENCES keys are left out: too many causes to name one.
    """
    configs = {id(g): g.runs[0].config for g in groups}
    pairs: dict[tuple[int, int], tuple[Group, Group, list[str]]] = {}
    for group in groups:
        best: tuple[int, Group, list[str]] | None = None
        for other in groups:
            if other is group:
                continue
            keys = _diff(configs[id(group)], configs[id(other)])
            if keys and (best is None or len(keys) < best[0]):
                best = (len(keys), other, keys)
        if best is None or best[0] > MAX_PAIR_DIFFERENCES:
            continue
        _, other, keys = best
        base, run = sorted((group, other), key=lambda g: [_plainness(configs[id(g)].get(k)) for k in keys])
        pairs.setdefault(tuple(sorted((id(base), id(run)))), (base, run, keys))
    return sorted(pairs.values(), key=lambda p: (not any(k in LEVERS for k in p[2]), p[0].key, p[1].key))


def _diff(a: dict, b: dict) -> list[str]:
    keys = {k for k in a.keys() | b.keys() if meaningful(k) and k != SEED_KEY and repr(a.get(k)) != repr(b.get(k))}
    return sorted(keys, key=lambda k: (k not in LEVERS, k))


def _plainness(value) -> tuple:
    """Sort key: False, 1, "single", "fp32" (the settings a baseline has) come first, then by value."""
    if isinstance(value, bool) or value is None:
        return (bool(value), 0, 0.0, "")
    plain = value in (0, 1, "single", "fp32")
    if isinstance(value, (int, float)):
        return (not plain, 0, float(value), "")
    return (not plain, 1, 0.0, str(value))


def _effect_note(base: Group, run: Group, keys: list[str], rows: dict[str, dict], metric: str, label: str) -> str:
    """What changing ``keys`` did: memory, speed and time (seed means), the loss at the end and at equal
    budgets, and whether the loss difference stands out of the seed noise."""
    first, other = base.runs[0], run.runs[0]
    change = ", ".join(f"{k} {first.config.get(k)} → {other.config.get(k)}" for k in keys)

    def mean(group: Group, field: str) -> float:
        return group.stats(lambda r: rows[r.id][field]).mean

    effects = [
        _relative("peak memory", mean(base, "peak_mem_gb"), mean(run, "peak_mem_gb"), "{:.2f} GB"),
        _relative("tokens/s", mean(base, "tok_per_s"), mean(run, "tok_per_s"), "{:,.0f}"),
        _relative("total time", mean(base, "elapsed_s"), mean(run, "elapsed_s"), "{:.1f} s"),
    ]
    b_loss, r_loss = (g.stats(lambda r: rows[r.id][metric]) for g in (base, run))
    if b_loss.n and r_loss.n:
        effects.append(f"best {label} {b_loss.mean_std('.4f')} → {r_loss.mean_std('.4f')} "
                       f"({r_loss.mean - b_loss.mean:+.4f}; {significance(b_loss, r_loss)})")
    effects += equal_budget_notes(base, run)
    effects = [e for e in effects if e] or ["no comparable numbers yet"]
    return f"{change} ({run.title} vs {base.title}): {'; '.join(effects)}."


def _relative(what: str, before, after, fmt: str) -> str:
    if not (finite(before) and finite(after)) or before == 0:
        return ""
    return f"{what} {fmt.format(before)} → {fmt.format(after)} ({(after - before) / before:+.0%})"


# ---------------------------------------------------------------------------------------------------
# Seeds, budgets and objectives


@dataclass
class Spread:
    """Numbers of one quantity over the runs of a seed group (the finite ones)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation (ddof 1); 0 for one value, NaN for none."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0 if self.n else math.nan

    def mean_std(self, fmt: str) -> str:
        """"1.8840 ± 0.0120" (one value: the value alone; none: "-")."""
        if not self.n:
            return "-"
        return format(self.mean, fmt) + (f" ± {format(self.std, fmt)}" if self.n > 1 else "")

    def range(self, fmt: str) -> str:
        return f"{format(min(self.values), fmt)} – {format(max(self.values), fmt)}" if self.n else "-"


@dataclass
class Group:
    """Runs of one configuration: their configs differ only by train.seed, or they share run.group."""

    key: str
    label: str
    runs: list[RunRecord]

    @property
    def title(self) -> str:
        """How notes name it: its run's label when it is one run, else its label and the number of seeds."""
        return self.runs[0].label if len(self.runs) == 1 else f"{self.label} ({len(self.runs)} seeds)"

    def stats(self, value) -> Spread:
        """``value(run)`` over the group's runs, the non-finite left out."""
        return Spread([float(v) for v in (value(r) for r in self.runs) if finite(v)])


def group_key(record: RunRecord) -> str:
    """run.group when set, else the config without the seed and the keys that do not change training."""
    config = record.config
    if config.get("run.group"):
        return f"group {config['run.group']}"
    if not config:  # nothing known about it: a group of its own
        return f"run {record.id}"
    return repr(sorted((k, repr(v)) for k, v in config.items() if meaningful(k) and k != SEED_KEY))


def seed_groups(records: list[RunRecord], key=group_key) -> list[Group]:
    """The records as seed groups, in order of first appearance. A group is labelled by run.group, else by
    its overrides that are neither the seed nor shared by every record, else by the config values that set
    it apart from the other groups, else by its run's name. ``key`` is ``group_key`` or a cached version."""
    overrides = [[o for o in r.info.get("overrides") or [] if not o.startswith(f"{SEED_KEY}=")] for r in records]
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    groups: dict[str, Group] = {}
    for record, own in zip(records, overrides, strict=True):
        name = key(record)
        if name not in groups:
            label = str(record.config.get("run.group") or " ".join(o for o in own if o not in common))
            groups[name] = Group(name, label, [])
        groups[name].runs.append(record)
    found = list(groups.values())
    keys = [k for k in differing_keys([g.runs[0] for g in found]) if k != SEED_KEY]
    for group in found:
        if not group.label:
            config = group.runs[0].config
            group.label = " ".join(f"{k}={config.get(k)}" for k in keys) or group.runs[0].name
    return found


def significance(a: Spread, b: Spread) -> str:
    """Whether the means of two groups differ by more than their seeds scatter: the difference in standard
    errors (Welch's), "one seed: cannot tell" when a group has a single run."""
    if a.n < 2 or b.n < 2:
        return "one seed: cannot tell"
    error = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    if error == 0:
        return "no seed spread at all: cannot tell"
    ratio = abs(b.mean - a.mean) / error
    verdict = "larger than" if ratio >= SIGNIFICANT_STANDARD_ERRORS else "within"
    return f"{verdict} the seed noise: {ratio:.1f} standard errors"


def loss_within(record: RunRecord, budget: str, amount: float) -> float | None:
    """The best val loss among the evals done within ``amount`` of ``budget`` (tokens, elapsed_s or flops)."""
    evals = record.frame(EVAL)
    if budget not in evals:
        return None
    return _finite_stat(evals.val_loss[evals[budget] <= amount], "min")


def equal_budget_notes(base: Group, run: Group) -> list[str]:
    """The loss each group reached by the smaller budget of the two (tokens, time, FLOPs): a run that simply
    trained longer does not win by that alone."""
    notes = []
    for budget, fmt in BUDGETS.items():
        spent = [_finite_stat(r.frame(EVAL)[budget], "max") if budget in r.frame(EVAL) else None
                 for r in base.runs + run.runs]
        if not all(finite(s) for s in spent):
            continue
        amount = min(spent)
        b, r = (g.stats(lambda rec, on=budget, most=amount: loss_within(rec, on, most)) for g in (base, run))
        if b.n and r.n:
            notes.append(f"at equal {fmt.format(amount)}: val loss {b.mean:.4f} → {r.mean:.4f}")
    return notes


def objective_name(record: RunRecord) -> str:
    """The run's ``sweep.objective`` (val_loss when its config does not say)."""
    name = record.config.get("sweep.objective")
    return name if name in OBJECTIVES else "val_loss"


def objective_value(record: RunRecord, summary: dict | None = None) -> float | None:
    """The run's value of its ``sweep.objective``: the best val loss or val bits per byte, the steady
    tokens/s, or the seconds to the first eval at or below train.target_loss (time_to_target).
    ``summary`` is the run's ``summarize`` when the caller has it (not used for time_to_target)."""
    objective = objective_name(record)
    if summary is None or objective == "time_to_target":
        summary = summarize(record, _number(record.config.get("train.target_loss")))
    return summary.get(OBJECTIVE_SUMMARY[objective])


def best_run(records: list[RunRecord], summaries: dict[str, dict] | None = None) -> RunRecord | None:
    """The completed run with the best objective, each judged by its own objective's direction."""
    scored = []
    for record in records:
        value = objective_value(record, (summaries or {}).get(record.id)) if record.status == "completed" else None
        if finite(value):
            scored.append((value if OBJECTIVES[objective_name(record)] == "minimize" else -value, record))
    return min(scored, key=lambda pair: pair[0])[1] if scored else None


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


def _number(value):
    """A JSON value as a float when it is a number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def finite(value) -> bool:
    """A real, finite number (numpy's included; bools and None are not numbers here)."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_stat(values: pd.Series, how: str) -> float | None:
    """min/max/median of the finite values, None when there are none."""
    values = values[np.isfinite(values)]
    return float(getattr(values, how)()) if len(values) else None


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _first(*values):
    for value in values:
        if _number(value) is not None:
            return value
    return None
