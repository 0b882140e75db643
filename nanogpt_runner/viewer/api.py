"""The viewer's public API for scripts (gradio_client): /runs, /groups and /analysis, read-only and typed.

Each endpoint's inputs and outputs are type hints (TypedDicts), so ``Client.view_api()`` lists every field.
Run folders are found by the ids /runs lists; an id the caller made up is dropped, more than MAX_COMPARED
ids are refused (a call holds the page's only update slot). These three are ui.PUBLIC_API: every other
listener is private and refused by name (host_check.PublicApiOnly).
"""

# No "from __future__ import annotations": Gradio reads these hints as objects to document the API.

from typing import Any, TypedDict

import gradio as gr

from nanogpt_runner.analysis.comparison import seed_groups
from nanogpt_runner.viewer.dashboard import ALWAYS_SHOWN, BOOKKEEPING, MAX_COMPARED, OUTCOMES, Dashboard


class RunRow(TypedDict):
    """One run as the runs table shows it, numbers in full (None: not measured)."""

    folder: str  # the run's id: its folder under the runs root (pass it to /groups and /analysis)
    name: str  # what makes it different (a sweep job by its overrides: "lr=3e-3 · accum=4")
    status: str
    stop: str | None  # why it ended ("stopped: target 1.5 reached at step 840"); None while it runs
    best_val_loss: float | None
    best_val_bpb: float | None
    last_train_loss: float | None
    tok_per_s: float | None
    mfu: float | None  # a fraction of the device's peak FLOP/s
    peak_mem_gb: float | None
    elapsed_s: float | None
    steps: int | None
    settings: dict[str, Any]  # the config keys that differ among the listed runs (precision, layout: as used)
    sweep: str | None
    objective: str | None  # a sweep job's objective ("★ 1.512 (val_loss)": the best of its sweep starred)
    tags: list[str]


class Spread(TypedDict):
    """One number over a seed group's runs (the finite values); std is the sample standard deviation."""

    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None


class GroupRow(TypedDict):
    """A seed group: two runs or more that differ only by train.seed (or share run.group)."""

    group: str
    runs: list[str]  # their folders
    seeds: list[Any]
    best_val_loss: Spread
    tok_per_s: Spread
    elapsed_s: Spread


def register(dashboard: Dashboard) -> None:
    """Add the three endpoints to the Blocks being built."""

    def runs(filter_text: str = "", statuses: list[str] | None = None) -> list[RunRow]:
        """Every listed run (as the runs table lists them, newest first), matching the filter text and statuses."""
        dashboard.refresh()
        frame, _ = dashboard.table(filter_text or "", statuses if isinstance(statuses, list) else None)
        fixed = {"name", "status", "stop", *OUTCOMES, *BOOKKEEPING, *ALWAYS_SHOWN}
        rows = []
        for row in frame.astype(object).where(frame.notna(), None).to_dict(orient="records"):
            summary = dashboard.summary(dashboard.store.get(row["folder"]).record)
            numbers = {m.summary: summary[m.summary] for m in OUTCOMES.values() if m.summary in RunRow.__annotations__}
            rows.append(RunRow(folder=row["folder"], name=row["name"], status=row["status"], stop=row.get("stop"),
                               **numbers, settings={k: v for k, v in row.items() if k not in fixed},
                               sweep=row.get("sweep") or None, objective=row.get("objective"),
                               tags=dashboard.annotations(row["folder"]).tags))
        return rows

    def groups(run_ids: list[str]) -> list[GroupRow]:
        """The seed groups among these runs (folders as /runs lists them, at most MAX_COMPARED)."""
        dashboard.refresh()
        selected = dashboard.selected(_few(run_ids))
        out = []
        for group in (g for g in seed_groups(selected) if len(g.runs) > 1):
            spreads = {f: _spread(group.stats(lambda r, f=f: dashboard.summary(r)[f]))
                       for f in ("best_val_loss", "tok_per_s", "elapsed_s")}
            out.append(GroupRow(group=group.label, runs=[r.id for r in group.runs],
                                seeds=[r.config.get("train.seed") for r in group.runs], **spreads))
        return out

    def analysis(run_ids: list[str], target_loss: float | None = None) -> str:
        """The Compare tab's analysis of these runs in Markdown: a two-line conclusion, then the details."""
        dashboard.refresh()
        return dashboard.compare(_few(run_ids), target=target_loss).analysis

    for handler in (runs, groups, analysis):
        gr.api(handler, api_name=handler.__name__, concurrency_id="dashboard", concurrency_limit=1)


def _spread(spread) -> Spread:
    def number(value) -> float | None:
        return float(value) if spread.n else None

    return Spread(n=spread.n, mean=number(spread.mean), std=number(spread.std),
                  min=number(min(spread.values, default=0.0)), max=number(max(spread.values, default=0.0)))


def _few(run_ids) -> list[str]:
    """``run_ids`` of one API call; more than MAX_COMPARED (the call would hold the page's only slot) refused."""
    if not isinstance(run_ids, list) or len(run_ids) > MAX_COMPARED:
        raise gr.Error(f"pass a list of at most {MAX_COMPARED} run folders (as /runs lists them) per call")
    return run_ids
