"""The Gradio page: layout and wiring only; what it shows comes from Dashboard, what it starts from Launcher.

Live updates: one gr.Timer. Its tick and every control run the same ``update``, which asks the
dashboard what changed and sends only that (gr.skip() for the rest), so an idle page costs a few stat
calls per tick and plots never flicker. The public API is PUBLIC_API, three read-only views for scripts;
every other listener is private: not listed, refused by name (host_check.PublicApiOnly), reachable only
by position through Gradio's queue as the page calls it, so each checks its own inputs.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr

from nanogpt_runner.analysis.records import X_TITLES
from nanogpt_runner.config.schema import MAX_NOTES_CHARS, PRECISIONS
from nanogpt_runner.runs.annotations import Annotations
from nanogpt_runner.viewer import manage
from nanogpt_runner.viewer.curves import PLOTS, log_scaled, plot_title
from nanogpt_runner.viewer.dashboard import (
    BARS,
    MAX_COMPARED,
    STATUSES,
    Dashboard,
    export_plot_data,
    export_report,
    markdown_text,
)
from nanogpt_runner.viewer.launcher import Launcher
from nanogpt_runner.viewer.page_policy import FORM_FIELDS, LaunchError, presets
from nanogpt_runner.viewer.sampler import MAX_NEW_TOKENS, Sampler

CSS = "#runs-table {font-size: 0.85em} .analysis li {margin-bottom: 0.2em}"
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
                with gr.Row():
                    text = gr.Textbox(label="Filter", placeholder="name, folder or override, e.g. grad_accum=4",
                                      elem_id="filter", scale=2)
                    statuses = gr.CheckboxGroup(STATUSES, label="Status (none ticked: all)", scale=3)
                    tag_filter = gr.Dropdown([], value=[], multiselect=True, label="Tags (any of them)",
                                             elem_id="tag-filter", scale=2)
                    archived = gr.Checkbox(False, label="show archived runs", elem_id="show-archived", scale=1)
                    group_by = gr.Dropdown([], value=None, allow_custom_value=True, elem_id="group-by", scale=2,
                                           label="Group by (a config key, e.g. optimizer.lr): table and plots")
                table = gr.Dataframe(interactive=False, elem_id="runs-table", max_height=560,
                                     label="Runs (click a row to add it to or remove it from the comparison)")
                panel = _manage_panel()
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    x_axis = gr.Radio(list(X_TITLES), value="step", label="x axis")
                    smoothing = gr.Slider(0.0, 0.99, value=0.0, step=0.01, label="EMA smoothing (train curves)")
                    log_y = gr.Checkbox(False, label="log10 loss")
                    target = gr.Number(None, label="target val loss (time to target; empty or 0: none)")
                plots = {
                    name: gr.LinePlot(x="x", y="y", color="series", title=plot_title(name), x_title="step",
                                      y_title=plot_title(name), color_title="run", tooltip="all", height=250,
                                      elem_id=f"plot-{name}")
                    for name in PLOTS
                }
                with gr.Row():
                    bars = {name: gr.BarPlot(x="run", y="value", color="run", title=title, x_title="run",
                                             y_title=title, y_lim=[0, None], x_label_angle=30, height=260,
                                             tooltip="all", elem_id=f"bar-{name}")
                            for name, (_, title) in BARS.items()}
                diff = gr.Dataframe(interactive=False, label="Config keys that differ between the selected runs")
                analysis = gr.Markdown(elem_classes=["analysis"], elem_id="analysis")
                groups = gr.Dataframe(interactive=False, elem_id="seed-groups",
                                      label="Seed groups (runs that differ only by train.seed, or share run.group)")
                with gr.Row():
                    seed_plot = gr.Plot(label="val loss by seed group: mean and min–max band", elem_id="seed-plot")
                    hyperparameters = gr.Plot(label="swept settings against the objective", elem_id="hyperparameters")
                with gr.Row():
                    plot_csv = gr.Button("Download CSV of what each plot shows", elem_id="plot-csv")
                    export = gr.Button("Export summary.csv + comparison.png of the selected runs")
                    files = gr.File(label="Report files", file_count="multiple")
            with gr.Tab("Launch", id="launch"):
                form, extra, launch, launch_status, procs, stop, log = _launch_tab()
            if sampler is not None:
                with gr.Tab("Sample", id="sample"):
                    sample_run, prompt, max_tokens, sample_button, sample_out = _sample_tab()
        timer = gr.Timer(refresh_s)

        inputs = [seen, text, statuses, tag_filter, archived, group_by, selection, x_axis, smoothing, log_y, target]
        outputs = [seen, note, table, selection, tag_filter, panel["run"], group_by, *plots.values(), *bars.values(),
                   diff, analysis, groups, seed_plot, hyperparameters]

        def update(seen_value, text_value, status_value, tag_value, archived_value, group_value, selected, x, smooth,
                   logy, target_value):
            group_value = group_value or None
            if seen_value is None and not selected:  # first paint: the newest runs preselected
                dashboard.refresh()
                selected = dashboard.default_selection()
            new_seen, table_part, view = dashboard.tick(
                seen_value, (text_value, status_value, tag_value, archived_value, group_value),
                (selected, x, smooth, logy, target_value, group_value))
            result = [new_seen]
            if table_part is None:
                result += [gr.skip()] * 6
            else:
                frame, note_text = table_part
                present = [i for i in selected or [] if dashboard.store.get(i) is not None]  # deleted runs drop out
                choices = dashboard.choices(text_value, status_value, present, tag_value, archived_value)
                tags = dashboard.tags()
                result += [note_text, frame, gr.Dropdown(choices=choices, value=present, multiselect=True),
                           gr.Dropdown(choices=tags, value=[t for t in tag_value or [] if t in tags], multiselect=True),
                           gr.Dropdown(choices=choices),
                           gr.Dropdown(choices=["", *dashboard.group_keys(present)])]
            if view is None:
                return result + [gr.skip()] * (len(outputs) - len(result))
            axes = [x, bool(logy)]
            if (seen_value or {}).get("axes") != axes:
                new_seen["axes"] = axes
                result += [gr.LinePlot(value=view.curves[name], x_title=X_TITLES[x],
                                       y_title=f"log10 {plot_title(name)}" if logy and log_scaled(name)
                                       else plot_title(name))
                           for name in PLOTS]
            else:
                result += [view.curves[name] for name in PLOTS]
            result += [view.bars[name] for name in BARS]  # runs in one order everywhere: one colour each
            result += [view.diff, view.analysis, view.groups]
            for i, figure in enumerate((view.seed_plot, view.hyperparameters)):  # resent only when redrawn
                drawn = (seen_value or {}).get("figures", ["", ""])[i]
                result.append(figure if drawn != view.figure_keys[i] else gr.skip())
            new_seen["figures"] = view.figure_keys
            return result

        common = {"fn": update, "inputs": inputs, "outputs": outputs, "show_progress": "hidden",
                  "concurrency_id": "dashboard", "concurrency_limit": 1, **PRIVATE}
        timer.tick(trigger_mode="once", **common)
        gr.on([demo.load, text.input, statuses.input, tag_filter.input, archived.input, group_by.input, selection.input,
               x_axis.input, smoothing.release, log_y.input, target.input], trigger_mode="always_last", **common)
        _wire_manage(dashboard, panel, common)

        def toggle(selected, event: gr.SelectData):
            run_id = (event.row_value or [None])[-1]
            if dashboard.store.get(run_id) is None:
                return gr.skip()
            selected = list(selected or [])
            return [i for i in selected if i != run_id] if run_id in selected else selected + [run_id]

        table.select(toggle, [selection], [selection], **PRIVATE).then(**common)

        def export_files(selected, target_value):
            runs = dashboard.selected(selected)
            if not runs:
                raise gr.Error("Select runs to export first.")
            out_dir = Path(tempfile.mkdtemp(prefix="report-", dir=launcher.log_dir))  # removed when the viewer exits
            return [str(p) for p in export_report(runs, out_dir, target_value)]

        export.click(export_files, [selection, target], [files], **PRIVATE)

        def plot_files(selected, x, smooth, logy, target_value, group_value):
            if not dashboard.selected(selected):
                raise gr.Error("Select runs to compare first.")
            view = dashboard.compare(selected, x, smooth, bool(logy), target_value, group_value or None)
            out_dir = Path(tempfile.mkdtemp(prefix="plots-", dir=launcher.log_dir))
            return [str(p) for p in export_plot_data(view, x, bool(logy), out_dir)]

        plot_csv.click(plot_files, [selection, x_axis, smoothing, log_y, target, group_by], [files], **PRIVATE)
        _wire_launch(launcher, dashboard, timer, form, extra, launch, launch_status, procs, stop, log)
        if sampler is not None:
            _wire_sample(sampler, dashboard, timer, sample_run, prompt, max_tokens, sample_button, sample_out)
        _api(dashboard)
    return demo


def _manage_panel() -> dict:
    """Tags, note, archive and delete for one run (nanogpt_runner.viewer.manage checks every request)."""
    with gr.Accordion("Manage a run: tags, note, archive, delete", open=False, elem_id="manage"):
        with gr.Row():
            run = gr.Dropdown([], label="run", elem_id="manage-run", scale=2)
            tags = gr.Textbox(label="tags (separated by commas or spaces)", max_lines=1, elem_id="manage-tags", scale=2)
        notes = gr.Textbox(label="note", lines=2, max_length=MAX_NOTES_CHARS, elem_id="manage-notes")
        with gr.Row():
            save = gr.Button("Save tags and note", elem_id="manage-save")
            archive = gr.Button("Archive (hide from the list)", elem_id="manage-archive")
            delete = gr.Button("Delete…", variant="stop", elem_id="manage-delete")
        confirm = gr.Button("Yes, delete it", variant="stop", visible=False, elem_id="manage-confirm")
        status = gr.Markdown(elem_id="manage-status")
    return {"run": run, "tags": tags, "notes": notes, "save": save, "archive": archive, "delete": delete,
            "confirm": confirm, "status": status, "pending": gr.State(None)}


def _wire_manage(dashboard: Dashboard, m: dict, common: dict) -> None:
    def archive_label(marks) -> str:
        return "Show again (unarchive)" if marks.archived else "Archive (hide from the list)"

    def show(run_id):
        """The run's current tags and note in the boxes, and a line naming the run: until it shows, the boxes
        may still be overwritten by this load, so what is typed before it could be lost."""
        entry = dashboard.store.get(run_id)
        try:
            marks = manage.current(dashboard.store, run_id)
        except manage.ManageError:
            return "", "", gr.Button(archive_label(Annotations())), gr.Button(visible=False), None, ""
        label = markdown_text(entry.record.label)
        return (" ".join(marks.tags), marks.notes, gr.Button(archive_label(marks)), gr.Button(visible=False), None,
                f"Editing **{label}**: change its tags or note, then save.")

    shown = [m["tags"], m["notes"], m["archive"], m["confirm"], m["pending"], m["status"]]
    m["run"].change(show, [m["run"]], shown, **PRIVATE)

    def refreshed(message: str) -> str:
        dashboard.store.poll(everything=True)
        return message

    def save(run_id, tags, notes):
        try:
            manage.save(dashboard.store, run_id, tags, notes)
        except manage.AnnotationError as err:
            return markdown_text(err)
        return refreshed("Saved.")

    m["save"].click(save, [m["run"], m["tags"], m["notes"]], [m["status"]], **PRIVATE).then(**common)

    def toggle_archive(run_id):
        try:
            marks = manage.set_archived(dashboard.store, run_id, not manage.current(dashboard.store, run_id).archived)
        except manage.AnnotationError as err:
            return gr.skip(), markdown_text(err)
        return gr.Button(archive_label(marks)), refreshed("Archived: tick *show archived runs* to see it."
                                                          if marks.archived else "Shown in the list again.")

    m["archive"].click(toggle_archive, [m["run"]], [m["archive"], m["status"]], **PRIVATE).then(**common)

    def ask(run_id):
        try:
            _, question = manage.deletable(dashboard.store, run_id)
        except manage.AnnotationError as err:
            return gr.Button(visible=False), None, markdown_text(err)
        return gr.Button(visible=True), run_id, f"**{markdown_text(question)}**"

    m["delete"].click(ask, [m["run"]], [m["confirm"], m["pending"], m["status"]], **PRIVATE)

    def confirm(run_id, pending):
        if pending is None or pending != run_id:  # the confirmation was for another run
            return gr.Button(visible=False), None, "Click Delete… again for this run."
        try:
            done = manage.delete(dashboard.store, run_id)
        except manage.AnnotationError as err:
            return gr.Button(visible=False), None, markdown_text(err)
        return gr.Button(visible=False), None, markdown_text(done)

    m["confirm"].click(confirm, [m["run"], m["pending"]], [m["confirm"], m["pending"], m["status"]],
                       **PRIVATE).then(**common)


def _launch_tab():
    gr.Markdown("Fill in what differs from the preset (empty fields keep the preset's value). The runner's own "
                "validation checks everything before anything starts; the run appears in the table at the next "
                "refresh.")

    def field(label: str):  # text, not gr.Number: an empty number box would send 0, not "keep the preset"
        return gr.Textbox(label=label, placeholder="preset", max_lines=1)

    with gr.Row():
        model = gr.Dropdown(["", *presets("model")], value="", label="model preset")
        parallel = gr.Dropdown(["", *presets("parallel")], value="", label="parallel layout")
        nproc = field("processes (parallel.nproc_per_node)")
        precision = gr.Dropdown(["", *PRECISIONS], value="", label="precision")
        name = gr.Textbox("viewer", label="run name", max_lines=1)
    with gr.Row():
        n_layer, n_head, n_embd, block_size, dropout = (field(label) for label in (
            "n_layer", "n_head", "n_embd", "block_size", "dropout"))
    with gr.Row():
        lr, batch_size, grad_accum, max_iters = (field(label) for label in (
            "learning rate", "batch size", "grad accumulation", "iterations"))
        recompute = gr.Checkbox(False, label="activation recomputation")
        compile_ = gr.Checkbox(False, label="torch.compile")
    extra = gr.Textbox(label="extra settings (key=value, space-separated; the README lists the keys)",
                       elem_id="extra-overrides", placeholder="optimizer.warmup_iters=10 experiment=baby_cpu")
    launch = gr.Button("Check and start", variant="primary", elem_id="launch-button")
    status = gr.Markdown(elem_id="launch-status")
    with gr.Row():
        procs = gr.Dropdown([], label="runs started from this page", elem_id="launched", scale=3)
        stop = gr.Button("Stop (SIGTERM)", variant="stop", scale=1)
    log = gr.Textbox(label="launcher output (last lines)", lines=8, max_lines=8, autoscroll=True)
    form = dict(zip(FORM_FIELDS, [model, n_layer, n_head, n_embd, block_size, dropout, lr, batch_size, grad_accum,
                                max_iters, precision, recompute, compile_, parallel, nproc, name], strict=True))
    return form, extra, launch, status, procs, stop, log


def _wire_launch(launcher: Launcher, dashboard: Dashboard, timer, form, extra, launch, status, procs, stop, log):
    fields = list(form)

    def processes(selected_pid):
        choices = [(p.describe(), pid) for pid, p in launcher.processes.items()]
        pid = selected_pid if selected_pid in launcher.processes else (choices[-1][1] if choices else None)
        return gr.Dropdown(choices=choices, value=pid), launcher.log_tail(pid) if pid else ""

    def start(*values):
        form_values = dict(zip(fields, values[:-1], strict=True))
        try:
            launched = launcher.start(form_values, values[-1])
        except LaunchError as err:
            return ("**Not started:**\n\n" + "\n".join(f"- {markdown_text(line)}" for line in str(err).splitlines()),
                    *processes(None))
        dashboard.store.rescan_soon()
        return (f"Started pid {launched.process.pid}: `nanogpt-run {' '.join(launched.overrides)}`",
                *processes(launched.process.pid))

    launch.click(start, [*form.values(), extra], [status, procs, log], concurrency_limit=2, **PRIVATE)

    def stop_run(pid):
        if pid is None:
            return "Pick a run started from this page first."
        try:
            return launcher.stop(int(pid))
        except (LaunchError, TypeError, ValueError) as err:  # the page may send anything as the pid
            return str(err)

    stop.click(stop_run, [procs], [status], **PRIVATE)
    timer.tick(processes, [procs], [procs, log], show_progress="hidden", trigger_mode="once", **PRIVATE)


def _sample_tab():
    gr.Markdown("Generate text from a run's latest checkpoint (in a separate process; the viewer loads no model).")
    with gr.Row():
        run = gr.Dropdown([], label="run with a checkpoint", elem_id="sample-run", scale=3)
        max_tokens = gr.Number(200, precision=0, minimum=1, maximum=MAX_NEW_TOKENS, label="new tokens")
    prompt = gr.Textbox("\n", label="prompt", lines=2)
    button = gr.Button("Generate", variant="primary")
    out = gr.Textbox(label="sample", lines=12, elem_id="sample-out")
    return run, prompt, max_tokens, button, out


def _wire_sample(sampler: Sampler, dashboard: Dashboard, timer, run, prompt, max_tokens, button, out):
    def runs_with_checkpoints(current):
        choices = [(r.label, r.id) for r in sampler.runs(dashboard.store.records())]
        ids = [c[1] for c in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    timer.tick(runs_with_checkpoints, [run], [run], show_progress="hidden", trigger_mode="once", **PRIVATE)

    def generate(run_id, prompt_text, tokens):
        entry = dashboard.store.get(run_id)
        if entry is None:
            raise gr.Error("Pick a run from the list.")
        try:
            return sampler.sample(entry.record.path, prompt_text or "", int(tokens or 1))
        except (LaunchError, TypeError, ValueError) as err:  # the page may send anything as the token count
            raise gr.Error(html.escape(str(err))) from err  # gr.Error renders HTML; the text names run folders

    button.click(generate, [run, prompt, max_tokens], [out], concurrency_limit=1, **PRIVATE)


def _api(dashboard: Dashboard) -> None:
    """Read-only endpoints for scripts (gradio_client): the runs table, the analysis and the seed groups."""

    def runs(filter_text: str = "", statuses: list[str] | None = None) -> list[dict]:
        """Every listed run's row of the runs table, newest first."""
        dashboard.refresh()
        frame, _ = dashboard.table(filter_text, statuses)
        return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")

    def analysis(run_ids: list[str], target_loss: float | None = None) -> str:
        """The Compare tab's analysis of these runs (folders as listed by /runs, at most MAX_COMPARED), in words."""
        dashboard.refresh()
        return dashboard.compare(_few(run_ids), target=target_loss).analysis

    def groups(run_ids: list[str]) -> list[dict]:
        """The seed groups of these runs: runs, seeds, and each number's mean ± std and range over the seeds."""
        dashboard.refresh()
        return dashboard.compare(_few(run_ids)).groups.to_dict(orient="records")

    for handler in (runs, groups, analysis):
        gr.api(handler, api_name=handler.__name__, concurrency_id="dashboard", concurrency_limit=1)


def _few(run_ids) -> list[str]:
    """``run_ids`` of one API call; more than MAX_COMPARED (the call would hold the page's only slot) refused."""
    if not isinstance(run_ids, list) or len(run_ids) > MAX_COMPARED:
        raise gr.Error(f"pass a list of at most {MAX_COMPARED} run folders (as /runs lists them) per call")
    return run_ids
