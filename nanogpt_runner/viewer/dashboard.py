"""What the page shows, computed from the run store: the runs table and the comparison of selected runs.

Plain Python in, pandas and strings out, so every view is testable without a browser. ``tick`` is the
timer's cheap "what changed" check: it returns None for a part whose inputs did not move, and the
page then leaves that part alone (no re-render, no flicker, no bytes sent).
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nanogpt_runner.analysis.comparison import (
    Group,
    best_run,
    compare_notes,
    group_key,
    objective_name,
    objective_value,
    seed_groups,
)
from nanogpt_runner.analysis.naming import override_key, overrides_of
from nanogpt_runner.analysis.records import (
    RunRecord,
    differing_keys,
    ending,
    finite,
    format_duration,
    run_notes,
    summarize,
)
from nanogpt_runner.config.schema import SCRATCH
from nanogpt_runner.runs.annotations import Annotations
from nanogpt_runner.runs.rundir import METRIC, axis_title, summarized
from nanogpt_runner.viewer.curves import (
    PLOTS,
    group_name,
    grouped_panel,
    in_run_order,
    legend_name,
    log_scaled,
    panel,
    plot_title,
    run_frame,
)
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.swept import SweptPanel, swept_panels

MARKDOWN_SPECIAL = re.compile(r"([\\`\[\]!])")  # what can start a link, an image or a code span
STATUSES = ["running", "queued", "completed", "failed", "interrupted", "stalled"]
MAX_TABLE_ROWS = 500  # more rows make the page slow to update; the filter narrows them
MAX_CONFIG_COLUMNS = 12
MAX_EXACT_INT = 2**53  # larger whole numbers are sent as floats (exact in JSON and JavaScript up to here)
INIT_FROM = "model.init_from"  # the weights a run started from (config.ModelConfig.init_from)
DEFAULT_SELECTED = 5
MAX_COMPARED = 50  # runs per comparison (the page's selection, one /analysis or /groups call)
BARS = {  # bar plot -> (summary field, axis title)
    **{name: (field, axis_title(METRIC[field])) for name, field in
       (("time", "elapsed_s"), ("memory", "peak_mem_gb"), ("throughput", "tok_per_s"))},
    "to_target": ("time_to_target_s", "time to target val loss (s)"),
}
# The runs table's number columns, from the metrics registry (nanogpt_runner.runs.rundir.METRICS).
STAT_COLUMNS = {m.column: m for m in summarized() if m.column}
# They lead the table, the answer first: loss, then speed and cost, then how far the run got.
OUTCOME_ORDER = ["best_val_loss", "best_val_bpb", "last_train_loss", "tok_per_s", "mfu", "peak_mem_gb",
                 "est_peak_mem_gb", "elapsed_s", "steps"]
OUTCOMES = {c: m for c, m in sorted(STAT_COLUMNS.items(), key=lambda item: (
    OUTCOME_ORDER.index(item[1].summary) if item[1].summary in OUTCOME_ORDER else len(OUTCOME_ORDER)))}
# Config keys shown as what the run used instead (run.json's field): "auto" is not an answer.
USED = {"train.precision": ("precision", "precision"), "parallel.name": ("layout", "layout")}
MAX_USED_CHARS = 40
BOOKKEEPING = ["objective", "seed group val loss", "sweep", "tags", "note", "folder"]
ALWAYS_SHOWN = ("name", "status", "folder")  # the page finds a clicked row's run by its last cell, the folder


# The seed-group table's numbers: (column, summary field, registry metric for its decimals).
GROUP_COLUMNS = [("best val loss", "best_val_loss", "val_loss"), ("tokens/s", "tok_per_s", "tok_per_s"),
                 ("time (s)", "elapsed_s", "elapsed_s")]


@dataclass
class CompareView:
    curves: dict[str, pd.DataFrame]
    bars: dict[str, pd.DataFrame]
    diff: pd.DataFrame
    analysis: str
    groups: pd.DataFrame  # one row per seed group: mean ± std and the range over its seeds
    seed_plot: object | None  # matplotlib Figure: val loss mean with the min–max band per group (None: no group)
    figure_key: str  # what the seed plot was drawn from: the page resends it only when this changes
    swept: list[SweptPanel]  # one panel per swept key: its value against the objective (none: nothing swept)


class Dashboard:
    """The views of one runs root, shared by every browser session."""

    def __init__(self, store: RunStore, min_poll_s: float = 0.5):
        self.store = store
        self.min_poll_s = min_poll_s
        self._last_poll = 0.0
        self._cache: dict[tuple, tuple] = {}  # (kind, run id) -> (run version, params, value)
        self._band: tuple[str, object] | None = None  # the seed-band figure: (what it was drawn from, the figure)

    def refresh(self) -> None:
        """Poll the store, at most every ``min_poll_s`` however many sessions are ticking."""
        if time.monotonic() - self._last_poll >= self.min_poll_s:
            self._last_poll = time.monotonic()
            self.store.poll()

    # -- the runs table ------------------------------------------------------------------------------

    def listed(self, text: str = "", statuses: list[str] | None = None, tags: list[str] | None = None,
               archived: bool = False) -> list[RunRecord]:
        """Runs matching the filter text (name, folder, sweep, overrides, tags, note), statuses and tags (a run
        with any of them), newest first; archived runs only when ``archived``."""
        needle = (text or "").strip().lower()
        wanted = set(statuses or [])
        wanted_tags = set(tags or []) if isinstance(tags, list) else set()
        out = []
        for record in self.store.records():
            marks = self.annotations(record.id)
            if marks.archived and not archived:
                continue
            if wanted_tags and not wanted_tags & set(marks.tags):
                continue
            summary, _ = self._row(record)
            if wanted and summary["status"].split(" ")[0] not in wanted:
                continue
            if needle and needle not in _haystack(record, marks):
                continue
            out.append(record)
        return out

    def annotations(self, run_id: str) -> Annotations:
        """A run's tags, note and archived flag as the store last read them."""
        entry = self.store.get(run_id)
        return entry.annotations if entry else Annotations()

    def tags(self) -> list[str]:
        """Every tag of a run under the root, sorted (the tag filter's choices)."""
        return sorted({tag for entry in list(self.store.entries.values()) for tag in entry.annotations.tags})

    def table(self, text: str = "", statuses: list[str] | None = None, tags: list[str] | None = None,
              archived: bool = False, group_by: str | None = None) -> tuple[pd.DataFrame, str]:
        """(the runs table, a one-line note on what is shown): name and status, the outcome (OUTCOMES), then only
        the settings that differ among the listed runs (swept keys first; precision and layout as each run used
        them), then bookkeeping; a column empty in every row is left out. Numbers are full values (the page
        shows them rounded). ``group_by`` (a config key) is the first setting and orders the rows by its value."""
        records = self.listed(text, statuses, tags, archived)
        shown = records[:MAX_TABLE_ROWS]
        keys = self._setting_columns(shown)
        if self.groupable(group_by, shown):
            keys = [group_by, *(k for k in keys if k != group_by)]
            shown = sorted(shown, key=lambda r: _sort_value(self._row(r)[1].get(group_by)))
        spread = {}  # run id -> its seed group's val loss, for runs in a group of several
        for group in seed_groups(shown, key=lambda r: self._cached("group", r, None, lambda: group_key(r))):
            if len(group.runs) > 1:
                text = group_loss(group, lambda r: self._row(r)[0])
                spread.update((run.id, text) for run in group.runs)
        best = self._best_of_sweeps(shown)
        rows = [self._table_row(record, keys, spread, best) for record in shown]
        columns = ["name", "status", *OUTCOMES, "stop", *keys, *BOOKKEEPING]
        frame = pd.DataFrame(rows, columns=columns)
        frame = frame[[c for c in columns if c in ALWAYS_SHOWN or not _empty(frame[c])]]
        total = len(self.store.entries)
        note = f"{len(records)} of {total} runs match"
        if len(records) > len(shown):
            note += f"; showing the newest {len(shown)} (type in the filter to narrow)"
        note += f" · root {markdown_text(self.store.root)} · updated {time.strftime('%H:%M:%S')}"
        return frame, note

    def _setting_columns(self, shown: list[RunRecord]) -> list[str]:
        """The config keys that differ among ``shown`` (what a run actually used for precision and layout), the
        keys a sweep's overrides set first, then the levers, then the rest; at most MAX_CONFIG_COLUMNS."""
        configs = [self._row(r)[1] for r in shown]
        swept = {override_key(o) for r in shown for o in overrides_of(r)}
        keys = [k for k in differing_keys(shown) if k not in USED]
        keys = sorted(keys, key=lambda k: k not in swept)[:MAX_CONFIG_COLUMNS]
        used = [column for _, column in USED.values() if len({c.get(column) for c in configs}) > 1]
        if INIT_FROM not in keys and any(c.get(INIT_FROM, SCRATCH) != SCRATCH for c in configs):
            keys.append(INIT_FROM)  # where fine-tuned runs started from, even when they all started from one
        return [*used, *keys]

    def _table_row(self, record: RunRecord, keys: list[str], spread: dict[str, str], best: set[str]) -> dict:
        summary, config = self._row(record)
        marks = self.annotations(record.id)
        row = {"name": record.label, "status": summary["status"], "stop": summary["ending"],
               "sweep": summary["sweep"], "tags": " ".join(marks.tags) + (" (archived)" if marks.archived else "")}
        for column, metric in OUTCOMES.items():
            value = summary[metric.summary]
            row[column] = _json_number(value * 100 if metric.unit == "%" and finite(value) else value)
        row.update({key: _cell(config.get(key)) for key in keys})
        if record.sweep:
            value = objective_value(record, summary)
            shown_value = f"{value:.4g}" if finite(value) else "-"
            row["objective"] = f"{'★ ' if record.id in best else ''}{shown_value} ({objective_name(record)})"
        row["seed group val loss"] = spread.get(record.id)
        entry = self.store.get(record.id)
        row["note"] = "; ".join(entry.notes if entry else [])
        row["folder"] = record.id
        return row

    def details(self, run_id) -> str:
        """One run in full, for the page's details panel: every number unrounded, what it used, why it ended,
        its overrides and its whole config (the constant keys the table leaves out included)."""
        entry = self.store.get(run_id)
        if entry is None:
            return "Click a run in the table to see it in full here."
        record = entry.record
        summary, config = self._row(record)
        lines = [f"**{markdown_text(record.label)}** · folder {markdown_text(record.id)} · "
                 f"{markdown_text(summary['status'])} · {markdown_text(summary['ending'] or 'still going')}", ""]
        numbers = [f"{column} {summary[m.summary]!r}" for column, m in OUTCOMES.items()
                   if summary[m.summary] is not None]
        lines.append("- " + markdown_text(", ".join(numbers) or "no numbers yet"))
        lines.append("- " + markdown_text(f"used: precision {config.get('precision')}, layout {config.get('layout')}"))
        lines.append("- overrides: " + markdown_text(" ".join(overrides_of(record)) or "none"))
        lines += ["", "| config key | value |", "|---|---|"]
        lines += [f"| {markdown_text(k)} | {markdown_text(v).replace('|', '&#124;')} |"
                  for k, v in sorted(record.config.items())]
        return "\n".join(lines)

    def _best_of_sweeps(self, records: list[RunRecord]) -> set[str]:
        """The ids of each listed sweep's best job by its objective (the sweep table's star)."""
        sweeps: dict[str, list[RunRecord]] = {}
        for record in records:
            if record.sweep:
                sweeps.setdefault(record.sweep, []).append(record)
        summaries = {r.id: self._row(r)[0] for r in records}
        return {best.id for jobs in sweeps.values() if (best := best_run(jobs, summaries)) is not None}

    def choices(self, text: str = "", statuses: list[str] | None = None, selected: list[str] = (),
                tags: list[str] | None = None, archived: bool = False) -> list:
        """(label, id) pairs for the selection box: the listed runs plus whatever is already selected."""
        listed = self.listed(text, statuses, tags, archived)[:MAX_TABLE_ROWS]
        ids = {r.id for r in listed}
        extra = [e.record for i in selected if i not in ids and (e := self.store.get(i))]
        return [(f"{r.label} · {r.status}", r.id) for r in listed + extra]

    def default_selection(self, n: int = DEFAULT_SELECTED) -> list[str]:
        return [r.id for r in self.listed()[:n]]

    def summary(self, record: RunRecord) -> dict:
        """The run's numbers (``summarize``) and ``ending``, computed once per change of the run."""
        return self._row(record)[0]

    def _row(self, record: RunRecord) -> tuple[dict, dict]:
        def compute():
            summary = summarize(record)
            summary["ending"] = ending(record, summary)
            if summary["diverged_at"] is not None:
                summary["status"] = f"{summary['status']} (diverged at step {summary['diverged_at']})"
            config = record.config
            for field, column in USED.values():  # what the run used ("auto" resolved), as run.json says
                used = record.info.get(field)
                config[column] = used[:MAX_USED_CHARS] if isinstance(used, str) else None
            return summary, config

        return self._cached("row", record, None, compute)

    def _cached(self, kind: str, record: RunRecord, params, compute):
        """``compute()`` once per run version and ``params``: only a run that changed costs anything."""
        entry = self.store.get(record.id)
        version = entry.version if entry else -1
        hit = self._cache.get((kind, record.id))
        if hit is not None and hit[0] == version and hit[1] == params:
            return hit[2]
        value = compute()
        self._cache[(kind, record.id)] = (version, params, value)
        return value

    # -- comparing selected runs ---------------------------------------------------------------------

    def selected(self, run_ids: list[str]) -> list[RunRecord]:
        """The selected runs that exist under the root (the first MAX_COMPARED, each once), curves loaded; ids
        the page made up are dropped."""
        known = list(dict.fromkeys(i for i in run_ids or [] if self.store.get(i) is not None))[:MAX_COMPARED]
        self.store.load(known)
        return [self.store.get(i).record for i in known]

    def compare(self, run_ids: list[str], x: str = "step", smoothing: float = 0.0, log_y: bool = False,
                target: float | None = None, group_by: str | None = None) -> CompareView:
        """The Compare tab for these runs; ``group_by`` (a config key) draws one mean series and one mean bar
        per value of that key instead of one per run."""
        runs = self.selected(run_ids)
        target = target if finite(target) and target > 0 else None
        group_by = group_by if self.groupable(group_by, runs) else None
        curves = {plot: self._curve(runs, plot, x, smoothing, log_y and log_scaled(plot), group_by) for plot in PLOTS}
        summaries = {r.id: self._cached("summary", r, target, lambda r=r: summarize(r, target)) for r in runs}
        bars = {name: _bars(runs, summaries, field, group_by) for name, (field, _) in BARS.items()
                if name != "to_target" or target is not None}  # no target: no time to it, no empty chart
        notes = {r.id: self._cached("notes", r, target, lambda r=r: run_notes(r, summaries[r.id])) for r in runs}
        groups = [group for group in seed_groups(runs) if len(group.runs) > 1]  # one run is not a group
        return CompareView(curves, bars, config_diff(runs), analysis_markdown(runs, target, summaries, notes),
                           group_table(groups, summaries), *self._seed_band(runs, groups, x),
                           swept_panels(runs, summaries))

    def _seed_band(self, runs: list[RunRecord], groups: list[Group], x: str) -> tuple[object | None, str]:
        """(the seed-band figure, what it was drawn from). Drawn again only when what it shows changed (a new eval
        of a grouped run), since matplotlib takes a good part of a second: a growing run between evals costs
        nothing here. matplotlib loads on first use, so a selection without a seed group never loads it."""
        key = repr((x, [(r.id, len(r.metrics.eval) if r.metrics else 0) for r in runs])) if groups else ""
        if self._band is None or self._band[0] != key:
            self._band = (key, _seed_band_figure(runs, x) if key else None)
        return self._band[1], key

    def _curve(self, runs: list[RunRecord], metric: str, x: str, smoothing: float, log_y: bool,
               group_by: str | None) -> pd.DataFrame:
        params = (x, smoothing, log_y)
        frames = [self._cached(f"curve:{metric}", r, params, lambda r=r: run_frame(r, metric, *params)) for r in runs]
        return grouped_panel(frames, runs, group_by) if group_by else panel(frames, runs)

    def group_keys(self, run_ids: list[str]) -> list[str]:
        """The config keys these runs can be grouped by (the group-by box's choices), sorted."""
        return sorted({key for run in self.selected(run_ids) for key in run.config})

    @staticmethod
    def groupable(key, runs: list[RunRecord]) -> bool:
        """Only a key that some run's config has: the page may send anything."""
        return isinstance(key, str) and any(key in run.config for run in runs)

    # -- the timer -----------------------------------------------------------------------------------

    def tick(self, seen: dict | None, table_args: tuple, compare_args: tuple) -> tuple[dict, tuple | None,
                                                                                     CompareView | None]:
        """Refresh, then recompute only the parts whose inputs changed since ``seen`` (the session's)."""
        self.refresh()
        selected = self.selected(compare_args[0])  # reading new curves changes versions: do it first
        seen = dict(seen or {})
        table_key = [self.store.version, list(table_args)]
        table = None
        if seen.get("table") != table_key:
            table = self.table(*table_args)
            seen["table"] = table_key
        compare_key = [[list(v) for v in self.store.versions([r.id for r in selected])], list(compare_args)]
        view = None
        if seen.get("compare") != compare_key:
            view = self.compare(*compare_args)
            seen["compare"] = compare_key
        return seen, table, view


def _bars(runs: list[RunRecord], summaries: dict[str, dict], field: str, group_by: str | None) -> pd.DataFrame:
    """One bar per run (in ``in_run_order``, so colours match the curves), or with ``group_by`` the mean per
    value of that config key."""
    if group_by:
        values: dict[str, list[float]] = {}
        for run in runs:
            values.setdefault(group_name(run, group_by), []).append(_or_zero(summaries[run.id][field]))
        names = sorted(values)
        return pd.DataFrame({"run": names, "value": [float(np.mean(values[n])) for n in names]})
    ordered = in_run_order(runs)
    return pd.DataFrame({"run": [legend_name(r) for r in ordered],
                         "value": [_or_zero(summaries[r.id][field]) for r in ordered]})


def group_loss(group: Group, summary_of) -> str:
    """"1.8840 ± 0.0120 (3 seeds)": the group's best val loss over its seeds, for the runs table."""
    loss = group.stats(lambda r: summary_of(r)["best_val_loss"])
    decimals = METRIC["val_loss"].decimals
    return f"{loss.mean_std(f'.{decimals}f')} ({len(group.runs)} seeds)"


def group_table(groups: list[Group], summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per seed group of the selected runs: its runs and seeds, then mean ± std and min – max of the
    best val loss, tokens/s and time over the seeds (a single run: its numbers)."""
    rows = []
    for group in groups:
        row = {"group": group.label, "runs": len(group.runs),
               "seeds": " ".join(str(r.config.get("train.seed")) for r in group.runs)}
        for column, field, metric in GROUP_COLUMNS:
            spread = group.stats(lambda r, name=field: summaries[r.id][name])
            fmt = f",.{METRIC[metric].decimals}f"
            row[f"{column} mean ± std"] = spread.mean_std(fmt)
            row[f"{column} min – max"] = spread.range(fmt)
        rows.append(row)
    columns = ["group", "runs", "seeds"] + [f"{c} {stat}" for c, _, _ in GROUP_COLUMNS
                                            for stat in ("mean ± std", "min – max")]
    return pd.DataFrame(rows, columns=columns)


def _seed_band_figure(runs: list[RunRecord], x: str):
    """Each seed group's val loss mean and min–max band (matplotlib is loaded by the first one drawn)."""
    from nanogpt_runner.analysis.figures import seed_band_figure

    return seed_band_figure(runs, x)


def config_diff(runs: list[RunRecord]) -> pd.DataFrame:
    """The config keys that differ between the runs: one row per key, one column per run."""
    keys = differing_keys(runs)
    data = {"key": keys}
    for run in runs:
        config = run.config
        data[run.label] = [_cell(config.get(key)) for key in keys]
    return pd.DataFrame(data)


def analysis_markdown(runs: list[RunRecord], target: float | None, summaries: dict[str, dict] | None = None,
                      notes: dict[str, list[str]] | None = None) -> str:
    """The analysis in words: a two-line conclusion for the selection first, then what the runs say together,
    then a short section per run (why it ended when it did not simply finish; no lines on machine noise)."""
    if not runs:
        return "Select runs in the **Runs** tab to compare them."
    summaries = summaries or {run.id: summarize(run, target) for run in runs}
    across = compare_notes(runs, target, summaries)
    lead, ended = conclusion(runs, summaries, across)
    parts = [f"**Conclusion.** {markdown_text(lead)}  ", markdown_text(ended)]
    parts.append("")
    rest = across[1:] if across and across[0].startswith("best ") else across
    if rest:
        parts.append("**Across the selected runs**")
        parts += [f"- {markdown_text(note)}" for note in rest]
        parts.append("")
    for run in runs:
        summary = summaries[run.id]
        ended = ending(run, summary)
        parts.append(f"**{markdown_text(run.label)}** — {markdown_text(ended or summary['status'])}, "
                     f"{format_duration(summary['elapsed_s'])}")
        own = notes[run.id] if notes else run_notes(run, summary)
        parts += [f"- {markdown_text(note)}" for note in own if _worth_saying(note, run)]
        parts.append("")
    return "\n".join(parts)


def conclusion(runs: list[RunRecord], summaries: dict[str, dict], across: list[str]) -> list[str]:
    """Two lines that answer the selection: which did best (and by how much against the noise), then how the
    runs ended (how many finished, which failed or stopped early, and why)."""
    first = across[0] if across and across[0].startswith("best ") else (
        "nothing to rank yet: no run has a val loss." if len(runs) > 1 else
        f"{runs[0].label}: best val loss {_text(summaries[runs[0].id]['best_val_loss'])}.")
    ended = {run.id: ending(run, summaries[run.id]) for run in runs}
    finished = sum(1 for run in runs if ended[run.id].startswith("finished"))
    going = sum(1 for run in runs if not ended[run.id])
    told = [f"{run.label}: {ended[run.id]}" for run in runs
            if ended[run.id] and not ended[run.id].startswith("finished")]
    counts = [f"{finished} of {len(runs)} finished their steps"] + ([f"{going} still running"] if going else [])
    second = "; ".join(counts) + (f". {'; '.join(told[:4])}" if told else "") + ("; …" if len(told) > 4 else ".")
    return [first[0].upper() + first[1:], second]


def _worth_saying(note: str, run: RunRecord) -> bool:
    """A run's own note unless it only restates machine noise (throughput), or a run that failed is "too early
    to judge" (its ending says what happened)."""
    if note.startswith("throughput "):
        return False
    return not (note.startswith("too early") and run.status not in ("running", "queued"))


def _text(value) -> str:
    return f"{value:.4f}" if finite(value) else "-"


def markdown_text(value) -> str:
    """``value`` as literal text on one line of Markdown. Names, config values and notes come from run
    folders anyone may have written: no line breaks (new blocks), no brackets or ``!`` (links, images
    fetched when the tab opens), no backticks, and HTML's ``<``, ``>``, ``&`` as entities."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _haystack(record: RunRecord, marks: Annotations) -> str:
    overrides = record.info.get("overrides")
    words = [record.name, record.id, record.sweep, str(record.info.get("status", "")), *marks.tags, marks.notes]
    if isinstance(overrides, list):
        words += [str(o) for o in overrides]
    return " ".join(words).lower()


def _sort_value(value) -> tuple:
    """Numbers in numeric order, before anything else in text order (a group-by column's values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _cell(value):
    """Config values as table cells: lists and None as text so every column has one type."""
    return value if isinstance(value, (int, float, str)) else str(value)


def _json_number(value):
    """A table number: None when not finite; a whole number stays an int only within JSON's exact range (a run
    folder may claim 1e20 steps, and an int past 64 bits breaks the page's and the API's encoder)."""
    if not finite(value):
        return None
    if isinstance(value, (int, np.integer)) and abs(value) <= MAX_EXACT_INT:
        return int(value)
    return float(value)


def _empty(column: pd.Series) -> bool:
    """No value in any row (None, NaN or an empty text): the column would only take room."""
    return all(v is None or v == "" or (isinstance(v, float) and not np.isfinite(v)) for v in column)


def rounded_text(value) -> str:
    """A number as the table shows it: 4 significant digits (thousands separated); anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return "" if value is None else str(value)
    if not finite(value):
        return ""
    short = float(f"{value:.4g}")
    return f"{short:,.0f}" if abs(short) >= 1e4 else f"{short:.4g}"


def table_value(frame: pd.DataFrame) -> dict:
    """The table for gr.Dataframe: full values (sorting and the API use them), shown rounded to 4 significant
    digits with the full value on hover (``column_types``: a column holding numbers is drawn as HTML, each
    number a ``<span title=full>``); the run's details panel has them in full too. Built a column at a time."""
    data = frame.astype(object).where(frame.notna(), None).values.tolist()
    columns = [list(column) for column in zip(*data, strict=True)] if data else [[] for _ in frame.columns]
    shown_columns = [[_html_cell(v) for v in column] if _has_number(column) else
                     ["" if v is None else str(v) for v in column] for column in columns]
    shown = [list(row) for row in zip(*shown_columns, strict=True)] if data else []
    return {"headers": list(frame.columns), "data": data,
            "metadata": {"display_value": shown, "styling": [[""] * len(frame.columns) for _ in data]}}


def column_types(frame: pd.DataFrame) -> list[str]:
    """gr.Dataframe's datatype per column of ``table_value(frame)``: "html" where the column holds a number (its
    cells are spans with a title, every text in them escaped), else "str" (shown as text, never parsed)."""
    return ["html" if _has_number(list(frame[c])) else "str" for c in frame.columns]


def _has_number(column: list) -> bool:
    return any(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in column)


def _html_cell(value) -> str:
    """One cell of a number column as HTML: a finite number rounded, its full value as the hover title; any other
    value (text from a run folder in a mixed column) escaped."""
    if not finite(value):
        return "" if value is None or isinstance(value, float) else html.escape(str(value))
    full = repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
    return f'<span title="{full}">{html.escape(rounded_text(value))}</span>'


def _or_zero(value) -> float:
    return float(value) if finite(value) else 0.0


def export_plot_data(view: CompareView, x: str, log_y: bool, out_dir: Path) -> list[Path]:
    """A CSV per curve and bar plot of ``view``: exactly the points the page draws (smoothed, downsampled,
    log10 where it shows log10), the columns named as the axes are."""
    paths = []
    for name, frame in view.curves.items():
        path = out_dir / f"{name}.csv"
        title = f"log10 {plot_title(name)}" if log_y and log_scaled(name) else plot_title(name)
        drawn = frame.dropna(subset=["x", "y"])  # not a run's placeholder point (curves.panel)
        drawn.rename(columns={"x": x, "y": title, "series": "run"}).to_csv(path, index=False)
        paths.append(path)
    for name, frame in view.bars.items():
        path = out_dir / f"bar_{name}.csv"
        frame.rename(columns={"value": BARS[name][1]}).to_csv(path, index=False)
        paths.append(path)
    return paths


def export_report(runs: list[RunRecord], out_dir: Path, target: float | None = None) -> list[Path]:
    """The same CSV and PNG as ``nanogpt-report``, for the selected runs (matplotlib loaded only now)."""
    from nanogpt_runner.analysis.report import write_report

    return write_report(runs, out_dir, target)
