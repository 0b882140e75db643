"""The Study tab: pick a study sweep (``+study=techniques`` or ``+study=scaling``) and see its card (the same as
nanogpt-report's study.md) and plots, live: the page's timer rebuilds them only when a run of the study changed,
so arms fill in as their runs finish. Under the card, its plots (nanogpt-report's study.png): ratios with error
bars, loss differences with their intervals. The card's texts come from run folders: each line is escaped."""

from __future__ import annotations

import gradio as gr

from nanogpt_runner.viewer.dashboard import markdown_text
from nanogpt_runner.viewer.studies import StudyBoard, StudyView, study_choices

PRIVATE = {"api_visibility": "private"}


def study_tab() -> dict:
    study = gr.Dropdown([], value=None, label="study (a sweep made with +study=...)", elem_id="study-pick")
    card = gr.Markdown(elem_id="study-card")
    table = gr.Dataframe(interactive=False, elem_id="study-table", label="the card: each arm against the baseline, "
                         "ratios paired by seed ± their 95% interval", visible=False)
    figure = gr.Plot(label="each arm against the baseline: ratios and loss differences with their 95% intervals, "
                     "beside the measured noise (study.png)", show_label=False, elem_id="study-figure",
                     visible=False)
    return {"study": study, "card": card, "table": table, "figure": figure, "seen": gr.State(None)}


def wire_study(board: StudyBoard, tab: dict, timer: gr.Timer, demo: gr.Blocks) -> None:
    outputs = [tab["seen"], tab["study"], tab["card"], tab["table"], tab["figure"]]

    def update(seen, sweep):
        choices = study_choices(board.store)
        sweeps = [c[1] for c in choices]
        sweep = sweep if sweep in sweeps else (sweeps[0] if sweeps else None)
        key, view = board.view(sweep)
        new_seen = [repr(choices), repr(key)]
        picker = gr.Dropdown(choices=choices, value=sweep) if (seen or [None])[0] != new_seen[0] else gr.skip()
        if seen is not None and seen[1] == new_seen[1]:
            return [new_seen, picker, *[gr.skip()] * (len(outputs) - 2)]
        return [new_seen, picker, *_parts(view)]

    common = {"fn": update, "inputs": [tab["seen"], tab["study"]], "outputs": outputs, "show_progress": "hidden",
              "concurrency_id": "study", "concurrency_limit": 1, **PRIVATE}
    timer.tick(trigger_mode="once", **common)
    gr.on([demo.load, tab["study"].input], trigger_mode="always_last", **common)


def _parts(view: StudyView) -> list:
    lines = [f"**{view.kind} study** · {markdown_text(view.progress)}", ""] if view.kind else []
    lines += _card_lines(view)
    return [gr.Markdown("\n".join(lines)), gr.Dataframe(value=view.table, visible=len(view.table) > 0),
            gr.Plot(value=view.figure, visible=view.figure is not None)]


def _card_lines(view: StudyView) -> list[str]:
    """The card's sentences as Markdown list items, each escaped (arm names come from run folders)."""
    if view.kind is None:
        return [view.card]
    sentences = [line[2:] for line in view.card.splitlines() if line.startswith("- ")]
    return [f"- {markdown_text(s)}" for s in sentences]
