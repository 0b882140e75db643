"""Across runs: which did best, whether a difference is larger than the seed noise, and what a setting cost.

analysis.py answers "did this run work?" for one run; this module answers the questions a sweep asks
("what did accumulation, recomputation, precision or a layout cost in time and memory, and what did it do
to the loss?", "is that difference real?", "which trial won?"), for the viewer, ``nanogpt-report`` and the
sweep summary alike. It depends on analysis.py and runs.py only and imports no torch.

No difference inside the measured noise is reported as a difference: a loss difference is weighed against the
seed spread (``significance``), a tokens/s or time difference against the runs' speed noise (``speed_noise``:
the range of their tokens/s windows, which a loaded machine widens, and their seeds' spread), and either reads
"within noise" with the interval instead of a percentage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nanogpt_runner.analysis.records import (
    LEVERS,
    RunRecord,
    as_number,
    differing_keys,
    finite,
    finite_stat,
    format_duration,
    meaningful,
    summarize,
)
from nanogpt_runner.config.schema import OBJECTIVES
from nanogpt_runner.runs.rundir import EVAL, TRAIN

# Runs whose configs differ only in this key are one configuration tried with several seeds (a seed group).
SEED_KEY = "train.seed"
# A difference between two seed groups counts as real when it is at least this many standard errors.
SIGNIFICANT_STANDARD_ERRORS = 2.0
# Where each sweep.objective (config.OBJECTIVES) is found among summarize()'s numbers.
OBJECTIVE_SUMMARY = {"val_loss": "best_val_loss", "val_bpb": "best_val_bpb", "tok_per_s": "tok_per_s",
                     "time_to_target": "time_to_target_s"}
# The budgets two runs are compared at: the x column of the eval lines, and how to say an amount of it.
BUDGETS = {"tokens": "{:,.0f} tokens", "elapsed_s": "{:.1f} s", "flops": "{:.3g} FLOPs"}
# A pair of runs that differ in more keys than this is not a fair comparison of any one of them.
MAX_PAIR_DIFFERENCES = 3


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
        top, second = sorted(fast, key=lambda r: rows[r.id]["tok_per_s"], reverse=True)[:2]
        lead = rows[top.id]["tok_per_s"] / rows[second.id]["tok_per_s"] - 1
        noise = math.hypot(*(speed_noise(r) if finite(speed_noise(r)) else 0.0 for r in (top, second)))
        tie = f" (within noise of {second.label}: +{lead:.0%}, noise ±{noise:.0%})" if lead <= noise else ""
        notes.append(f"highest throughput: {top.label} at {rows[top.id]['tok_per_s']:,.0f} tokens/s{tie}.")
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
    tokenizers = {repr([(r.info.get("dataset") or {}).get(k) for k in ("tokenizer", "vocab_size")]) for r in records
                  if r.info.get("dataset")}  # a run refused before its data was read trained nothing to compare
    return ("best_val_loss", "val loss") if len(tokenizers) <= 1 else ("best_val_bpb", "val bits per byte")


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

    noise = math.hypot(group_speed_noise(base, rows), group_speed_noise(run, rows))
    effects = [
        _relative("peak memory", mean(base, "peak_mem_gb"), mean(run, "peak_mem_gb"), "{:.2f} GB"),
        _relative("tokens/s", mean(base, "tok_per_s"), mean(run, "tok_per_s"), "{:,.0f}", noise),
        _relative("total time", mean(base, "elapsed_s"), mean(run, "elapsed_s"), "{:.1f} s", noise),
    ]
    b_loss, r_loss = (g.stats(lambda r: rows[r.id][metric]) for g in (base, run))
    if b_loss.n and r_loss.n:
        verdict = significance(b_loss, r_loss)
        delta = "" if verdict.startswith("within") else f"{r_loss.mean - b_loss.mean:+.4f}; "
        effects.append(f"best {label} {b_loss.mean_std('.4f')} → {r_loss.mean_std('.4f')} ({delta}{verdict})")
    effects += equal_budget_notes(base, run)
    effects = [e for e in effects if e] or ["no comparable numbers yet"]
    return f"{change} ({run.title} vs {base.title}): {'; '.join(effects)}."


def _relative(what: str, before, after, fmt: str, noise: float = math.nan) -> str:
    """"tokens/s 6,000 → 9,000 (+50%)", or "(within noise: ±60%)" when the relative change is no larger
    than ``noise`` (a relative spread: a difference the runs' own scatter could make is not reported as one)."""
    if not (finite(before) and finite(after)) or before == 0:
        return ""
    change = (after - before) / before
    if finite(noise) and abs(change) <= noise:
        return f"{what} {fmt.format(before)} → {fmt.format(after)} (within noise: ±{noise:.0%})"
    return f"{what} {fmt.format(before)} → {fmt.format(after)} ({change:+.0%})"


def speed_noise(record: RunRecord) -> float:
    """How much a run's speed scatters: the range its middle 80% of tokens/s windows span (10th to 90th
    percentile), relative to their median; the first window (start-up) left out. A machine whose load changes
    while the run trains widens it. Two runs' speeds differ only by more than the hypot of their noises
    (a difference both runs' windows could show is the machine, not the setting); NaN with under 3 windows."""
    rates = record.frame(TRAIN).tok_per_s.to_numpy()[1:]
    rates = rates[np.isfinite(rates) & (rates > 0)]
    if len(rates) < 3:
        return math.nan
    low, middle, high = np.percentile(rates, [10, 50, 90])
    return float((high - low) / middle)


def group_speed_noise(group: Group, rows: dict[str, dict]) -> float:
    """A seed group's relative speed noise: its runs' window range, and twice the relative standard deviation
    of their speeds when it has several seeds (a load that changed between runs shows there); 0 when nothing
    was measured."""
    windows = [n for n in (speed_noise(r) for r in group.runs) if finite(n)]
    spread = group.stats(lambda r: rows[r.id]["tok_per_s"])
    seeds = 2 * spread.std / spread.mean if spread.n > 1 and spread.mean else 0.0
    within = math.sqrt(float(np.mean(np.square(windows)))) if windows else 0.0
    return math.hypot(within, seeds)


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
    """run.group when set, else the config without the seed and the keys that do not change training (its
    ``settings``, so a None value and a missing key are alike)."""
    config = record.config
    if config.get("run.group"):
        return f"group {config['run.group']}"
    if not config:  # nothing known about it: a group of its own
        return f"run {record.id}"
    return repr(sorted(item for item in record.settings() if item[0] != SEED_KEY))


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
    return finite_stat(evals.val_loss.to_numpy()[evals[budget].to_numpy() <= amount], "min")


def equal_budget_notes(base: Group, run: Group) -> list[str]:
    """The loss each group reached by the smaller budget of the two (tokens, time, FLOPs): a run that simply
    trained longer does not win by that alone."""
    notes = []
    for budget, fmt in BUDGETS.items():
        spent = [finite_stat(r.frame(EVAL)[budget], "max") if budget in r.frame(EVAL) else None
                 for r in base.runs + run.runs]
        if not all(finite(s) for s in spent):
            continue
        amount = min(spent)
        b, r = (g.stats(lambda rec, on=budget, most=amount: loss_within(rec, on, most)) for g in (base, run))
        if b.n and r.n:
            verdict = significance(b, r)
            notes.append(f"at equal {fmt.format(amount)}: val loss {b.mean:.4f} → {r.mean:.4f}"
                         + (f" ({verdict})" if verdict.startswith("within") else ""))
    return notes


def swept_keys(records: list[RunRecord]) -> list[str]:
    """The config keys that differ between the records and hold scalars (the seed last: it is noise): what a
    sweep's figure (figures.hyperparameter_figure) and the viewer's swept-settings panels plot."""
    keys = [k for k in differing_keys(records)
            if all(isinstance(r.config.get(k), (int, float, str, bool, type(None))) for r in records)]
    return sorted(keys, key=lambda k: k == SEED_KEY)


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
        summary = summarize(record, as_number(record.config.get("train.target_loss")))
    return summary.get(OBJECTIVE_SUMMARY[objective])


def best_run(records: list[RunRecord], summaries: dict[str, dict] | None = None) -> RunRecord | None:
    """The completed run with the best objective, each judged by its own objective's direction."""
    scored = []
    for record in records:
        value = objective_value(record, (summaries or {}).get(record.id)) if record.status == "completed" else None
        if finite(value):
            scored.append((value if OBJECTIVES[objective_name(record)] == "minimize" else -value, record))
    return min(scored, key=lambda pair: pair[0])[1] if scored else None
