"""The Study tab's view: a study sweep's card (analysis.study) and its plots, kept live as arms finish.

A study is a sweep whose runs carry ``study.kind`` (``nanogpt-run -m +study=techniques`` or ``scaling``).
The card is the same one ``nanogpt-report`` writes as study.md: numbers from the runs' own records,
intervals, one sentence per arm; the figure is its study.png (analysis.study_report: each arm's tokens/s and
memory ratios with their 95% error bars beside the speed noise, its val loss difference with its interval beside
the seed noise; a scaling study's isoFLOP curves and power laws). The view is rebuilt only when a run of the
study changed (a new line, a finished arm), so a tick over an idle study costs a dictionary lookup;
matplotlib loads with the first study drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from nanogpt_runner.analysis.records import RunRecord
from nanogpt_runner.analysis.study import SCALING, TECHNIQUES, scaling_card, study_kind, technique_card
from nanogpt_runner.viewer.store import RunStore

MAX_STUDY_RUNS = 200  # runs of one study read in full (a real study has tens)


@dataclass
class StudyView:
    kind: str | None  # "techniques", "scaling", or None: no study chosen or found
    card: str  # the card in Markdown (study.md), its sentences last
    table: pd.DataFrame  # one row per arm (technique) or budget (scaling), short texts
    figure: object | None = None  # matplotlib Figure: study.png's plots (None: nothing measured yet)
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
    from nanogpt_runner.analysis.study_report import scaling_figure, technique_figure  # loads matplotlib

    if kind == TECHNIQUES:
        card = technique_card(runs)
        measured = any(arm.status == "measured" for arm in card.arms)
        figure = technique_figure(card) if measured else None
    else:
        card = scaling_card(runs)
        figure = scaling_figure(card) if any(curve.points for curve in card.curves) else None
    return StudyView(kind, card.markdown(), pd.DataFrame(card.table_rows()), figure, progress)
