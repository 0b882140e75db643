"""The Gradio page: layout and wiring only; what it shows comes from Dashboard (runs, compare) and StudyBoard
(studies), what it starts from Launcher. Each tab is built by its own module (tab_runs, tab_compare,
tab_study, tab_launch); this one puts them together and runs the page's one update.

Live updates: one gr.Timer. Its tick and every control run the same ``update``, which asks the
dashboard what changed and sends only that (gr.skip() for the rest), so an idle page costs a few stat
calls per tick and plots never flicker. The public API is PUBLIC_API (viewer/api.py), three read-only typed
views for scripts; every other listener is private: not listed, refused by name (host_check.PublicApiOnly),
reachable only by position through Gradio's queue as the page calls it, so each checks its own inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from nanogpt_runner.viewer import api, tab_compare
from nanogpt_runner.viewer.dashboard import (
    ALWAYS_SHOWN,
    Dashboard,
    column_types,
    export_plot_data,
    export_report,
    table_value,
)
from nanogpt_runner.viewer.launcher import Launcher
from nanogpt_runner.viewer.sampler import Sampler
from nanogpt_runner.viewer.studies import StudyBoard
from nanogpt_runner.viewer.tab_launch import launch_tab, sample_tab, wire_launch, wire_sample
from nanogpt_runner.viewer.tab_runs import runs_tab, wire_manage
from nanogpt_runner.viewer.tab_study import study_tab, wire_study

CSS = ("#runs-table {font-size: 0.85em} .analysis li {margin-bottom: 0.2em} "
       ".analysis p:first-child {font-size: 1.05em}")
PRIVATE = {"api_visibility": "private"}
PUBLIC_API = ("runs", "groups", "analysis")  # the endpoints scripts may call by name (gradio_client)


def build_app(dashboard: Dashboard, launcher: Launcher, refresh_s: float = 2.0,
              sampler: Sampler | None = None) -> gr.Blocks:
    """The whole page for one runs root."""
    with gr.Blocks(title="nanogpt-runner viewer") as demo:
        seen = gr.State(None)
        gr.Markdown("## nanogpt-runner · runs")
        note = gr.Markdown(elem_id="note")
        selection = gr.Dropdown([], value=[], multiselect=True, label="Runs to compare", elem_id="selection")
        with gr.Tabs():
            with gr.Tab("Runs", id="runs"):
                runs = runs_tab()
            with gr.Tab("Compare", id="compare"):
                compare = tab_compare.compare_tab()
            with gr.Tab("Study", id="study"):
                study = study_tab()
            with gr.Tab("Launch", id="launch"):
                form, extra, launch, launch_status, procs, stop, log = launch_tab()
            if sampler is not None:
                with gr.Tab("Sample", id="sample"):
                    sample_run, prompt, max_tokens, sample_button, sample_out = sample_tab()
        timer = gr.Timer(refresh_s)
        common = _wire_update(dashboard, demo, timer, seen, note, selection, runs, compare)
        wire_manage(dashboard, runs["manage"], common)
        _wire_table_clicks(dashboard, runs, selection, common)
        _wire_exports(dashboard, launcher, selection, compare, runs["group_by"])
        wire_study(StudyBoard(dashboard.store), study, timer, demo)
        wire_launch(launcher, dashboard, timer, form, extra, launch, launch_status, procs, stop, log)
        if sampler is not None:
            wire_sample(sampler, dashboard, timer, sample_run, prompt, max_tokens, sample_button, sample_out)
        api.register(dashboard)
    return demo


def _wire_update(dashboard: Dashboard, demo: gr.Blocks, timer: gr.Timer, seen, note, selection, runs: dict,
                 compare: dict) -> dict:
    """The page's one update (timer and controls alike); returns its listener arguments for ``.then``."""
    inputs = [seen, runs["text"], runs["statuses"], runs["tags"], runs["archived"], runs["group_by"],
              runs["hidden"], selection, compare["x"], compare["smoothing"], compare["log_y"], compare["target"]]
    outputs = [seen, note, runs["table"], selection, runs["tags"], runs["manage"]["run"], runs["group_by"],
               runs["hidden"], *tab_compare.outputs(compare)]

    def update(seen_value, text_value, status_value, tag_value, archived_value, group_value, hidden_value,
               selected, x, smooth, logy, target_value):
        group_value = group_value or None
        if seen_value is None and not selected:  # first paint: the newest runs preselected
            dashboard.refresh()
            selected = dashboard.default_selection()
        hidden_value = [c for c in hidden_value or [] if isinstance(c, str)]
        table_args = (text_value, status_value, tag_value, archived_value, group_value)
        new_seen, table_part, view = dashboard.tick(seen_value, table_args,
                                                    (selected, x, smooth, logy, target_value, group_value))
        if table_part is None and (seen_value or {}).get("hidden") != hidden_value:  # columns chosen anew
            table_part = dashboard.table(*table_args)
        new_seen["hidden"] = hidden_value
        result = [new_seen]
        if table_part is None:
            result += [gr.skip()] * 7
        else:
            frame, note_text = table_part
            present = [i for i in selected or [] if dashboard.store.get(i) is not None]  # deleted runs drop out
            choices = dashboard.choices(text_value, status_value, present, tag_value, archived_value)
            tags = dashboard.tags()
            hideable = [c for c in frame.columns if c not in ALWAYS_SHOWN]
            shown = frame[[c for c in frame.columns if c not in hidden_value]]
            result += [note_text, gr.Dataframe(value=table_value(shown), datatype=column_types(shown)),
                       gr.Dropdown(choices=choices, value=present, multiselect=True),
                       gr.Dropdown(choices=tags, value=[t for t in tag_value or [] if t in tags], multiselect=True),
                       gr.Dropdown(choices=choices),
                       gr.Dropdown(choices=["", *dashboard.group_keys(present)]),
                       gr.Dropdown(choices=hideable, value=[c for c in hidden_value if c in hideable])]
        if view is None:
            return result + [gr.skip()] * (len(outputs) - len(result))
        return result + tab_compare.updates(view, seen_value or {}, new_seen, x, logy)

    common = {"fn": update, "inputs": inputs, "outputs": outputs, "show_progress": "hidden",
              "concurrency_id": "dashboard", "concurrency_limit": 1, **PRIVATE}
    timer.tick(trigger_mode="once", **common)
    gr.on([demo.load, runs["text"].input, runs["statuses"].input, runs["tags"].input, runs["archived"].input,
           runs["group_by"].input, runs["hidden"].input, selection.input, compare["x"].input,
           compare["smoothing"].release, compare["log_y"].input, compare["target"].input],
          trigger_mode="always_last", **common)
    return common


def _wire_table_clicks(dashboard: Dashboard, runs: dict, selection, common: dict) -> None:
    """A click on a row adds its run to the comparison (or takes it out) and shows it in full."""

    def toggle(selected, event: gr.SelectData):
        run_id = (event.row_value or [None])[-1]  # the folder: always the last column
        if dashboard.store.get(run_id) is None:
            return gr.skip(), gr.skip()
        selected = list(selected or [])
        chosen = [i for i in selected if i != run_id] if run_id in selected else selected + [run_id]
        return chosen, dashboard.details(run_id)

    runs["table"].select(toggle, [selection], [selection, runs["details"]], **PRIVATE).then(**common)


def _wire_exports(dashboard: Dashboard, launcher: Launcher, selection, compare: dict, group_by) -> None:
    def export_files(selected, target_value):
        runs = dashboard.selected(selected)
        if not runs:
            raise gr.Error("Select runs to export first.")
        out_dir = Path(tempfile.mkdtemp(prefix="report-", dir=launcher.log_dir))  # removed when the viewer exits
        return [str(p) for p in export_report(runs, out_dir, target_value)]

    compare["export"].click(export_files, [selection, compare["target"]], [compare["files"]], **PRIVATE)

    def plot_files(selected, x, smooth, logy, target_value, group_value):
        if not dashboard.selected(selected):
            raise gr.Error("Select runs to compare first.")
        view = dashboard.compare(selected, x, smooth, bool(logy), target_value, group_value or None)
        out_dir = Path(tempfile.mkdtemp(prefix="plots-", dir=launcher.log_dir))
        return [str(p) for p in export_plot_data(view, x, bool(logy), out_dir)]

    compare["plot_csv"].click(plot_files, [selection, compare["x"], compare["smoothing"], compare["log_y"],
                                           compare["target"], group_by], [compare["files"]], **PRIVATE)
