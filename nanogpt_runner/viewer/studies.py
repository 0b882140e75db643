"""The Study tab's view: a study sweep's card (analysis.study) and its plots, kept live as arms finish.

A study is a sweep whose runs carry ``study.kind`` (``nanogpt-run -m +study=techniques`` or ``scaling``).
The card is the same one ``nanogpt-report`` writes as study.md: numbers from the runs' own records,
intervals, one sentence per arm. The view is rebuilt only when a run of the study changed (a new line, a
finished arm), so a tick over an idle study costs a dictionary lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nanogpt_runner.analysis.records import RunRecord, finite
from nanogpt_runner.analysis.study import SCALING, TECHNIQUES, scaling_card, study_kind, technique_card
from nanogpt_runner.viewer.store import RunStore

# The technique card's bar plots: plot -> (its ArmResult interval, axis title); 1.0 (or 0) is the baseline.
TECHNIQUE_BARS = {"speed": ("speed", "tokens/s ratio (arm / baseline)"),
                  "memory": ("memory", "peak memory ratio (arm / baseline)"),
                  "loss": ("loss_delta", "val loss Δ at equal tokens (arm − baseline)")}
MAX_STUDY_RUNS = 200  # runs of one study read in full (a real study has tens)


@dataclass
class StudyView:
    kind: str | None  # "techniques", "scaling", or None: no study chosen or found
    card: str  # the card in Markdown (study.md), its sentences last
    table: pd.DataFrame  # one row per arm (technique) or budget (scaling), short texts
    bars: dict[str, pd.DataFrame] = field(default_factory=dict)  # technique: arm -> value per TECHNIQUE_BARS
    isoflop: pd.DataFrame | None = None  # scaling: (params, val loss, budget) points
    progress: str = ""  # "7 of 12 runs finished"


def study_choices(store: RunStore) -> list[tuple[str, str]]:
    """(label, sweep folder) for every sweep under the root whose runs are a study, newest first."""
    seen: dict[str, str] = {}
    for record in store.records():
        kind = record.config.get("study.kind") if record.sweep else None
        if kind in (TECHNIQUES, SCALING) and record.sweep not in seen:
            seen[record.sweep] = f"{kind} study · {record.sweep}"
    return [(label, sweep) for sweep, label in seen.items()]


class StudyBoard:
    """Study views of one runs root, each computed once per change of the study's runs."""

    def __init__(self, store: RunStore):
        self.store = store
        self._cache: dict[str, tuple[tuple, StudyView]] = {}

    def runs_of(self, sweep) -> list[RunRecord]:
        """The study's runs, curves loaded; a sweep the page made up has none."""
        if not isinstance(sweep, str):
            return []
        ids = [r.id for r in self.store.records() if r.sweep == sweep][:MAX_STUDY_RUNS]
        self.store.load(ids)
        return [self.store.get(i).record for i in ids if self.store.get(i) is not None]

    def view(self, sweep) -> tuple[tuple, StudyView]:
        """(what the view was made from, the view): the key changes whenever a run of the study did."""
        runs = self.runs_of(sweep)
        key = (sweep, self.store.versions([r.id for r in runs]))
        cached = self._cache.get(str(sweep))
        if cached is None or cached[0] != key:
            cached = (key, study_view(runs))
            self._cache = {str(sweep): cached}  # one study at a time is looked at
        return cached


def study_view(runs: list[RunRecord]) -> StudyView:
    """The card and plots of these runs (a study's), or a line saying what is missing."""
    kind = study_kind(runs)
    if kind is None:
        return StudyView(None, "Pick a study above. A study is a sweep made by `nanogpt-run -m +study=techniques` "
                         "(or `+study=scaling`); see docs/studies.md.", pd.DataFrame())
    done = sum(1 for r in runs if r.status not in ("running", "queued"))
    progress = f"{done} of {len(runs)} runs finished" + ("" if done == len(runs) else "; the card fills in as "
                                                         "arms finish")
    if kind == TECHNIQUES:
        card = technique_card(runs)
        bars = {name: _arm_bars(card.arms, attribute) for name, (attribute, _) in TECHNIQUE_BARS.items()}
        return StudyView(kind, card.markdown(), pd.DataFrame(card.table_rows()),
                         {name: frame for name, frame in bars.items() if frame.value.abs().sum() > 0},
                         progress=progress)  # an all-zero chart (no loss difference at all) is not drawn
    card = scaling_card(runs)
    points = pd.DataFrame([{"params": p, "val loss": loss, "budget": f"{c.budget:.3g} FLOPs"}
                           for c in card.curves for p, _, loss in c.points], columns=["params", "val loss", "budget"])
    return StudyView(kind, card.markdown(), pd.DataFrame(card.table_rows()), isoflop=points if len(points) else None,
                     progress=progress)


def _arm_bars(arms, attribute: str) -> pd.DataFrame:
    """One bar per measured arm: the mean of its interval (the card's table has the ± beside it)."""
    rows = [{"arm": arm.arm, "value": getattr(arm, attribute).mean} for arm in arms
            if getattr(arm, attribute) is not None and finite(getattr(arm, attribute).mean)]
    return pd.DataFrame(rows, columns=["arm", "value"])
