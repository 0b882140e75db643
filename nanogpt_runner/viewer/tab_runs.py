"""The Runs tab: filters, the runs table (the outcome first, then only what differs; rounded, full values in a
run's details), a column chooser, and the panel that tags, notes, archives and deletes a run (manage.py checks
every request). Every listener is private."""

from __future__ import annotations

import gradio as gr

from nanogpt_runner.config.schema import MAX_NOTES_CHARS
from nanogpt_runner.runs.annotations import Annotations
from nanogpt_runner.viewer import manage
from nanogpt_runner.viewer.dashboard import STATUSES, Dashboard, markdown_text

PRIVATE = {"api_visibility": "private"}


def runs_tab() -> dict:
    """The tab's components by name (the caller wires them to the page's one update)."""
    with gr.Row():
        text = gr.Textbox(label="Filter", placeholder="name, folder or override, e.g. grad_accum=4",
                          elem_id="filter", scale=2)
        statuses = gr.CheckboxGroup(STATUSES, label="Status (none ticked: all)", scale=3)
        tag_filter = gr.Dropdown([], value=[], multiselect=True, label="Tags (any of them)",
                                 elem_id="tag-filter", scale=2)
        archived = gr.Checkbox(False, label="show archived runs", elem_id="show-archived", scale=1)
    with gr.Row():
        group_by = gr.Dropdown([], value=None, allow_custom_value=True, elem_id="group-by", scale=2,
                               label="Group by (a config key, e.g. optimizer.lr): table and plots")
        hidden = gr.Dropdown([], value=[], multiselect=True, elem_id="hide-columns", scale=3,
                             label="Hide columns (settings the same in every run are never shown)")
    table = gr.Dataframe(interactive=False, elem_id="runs-table", max_height=560, pinned_columns=1,
                         label="Runs: outcome first, then the settings that differ. Click a header to sort; click a "
                               "row to add it to or remove it from the comparison and see it in full below")
    with gr.Accordion("Run details: every number in full, what it used, its whole config", open=False,
                      elem_id="details-panel"):
        details = gr.Markdown("Click a run in the table to see it in full here.", elem_id="details")
    return {"text": text, "statuses": statuses, "tags": tag_filter, "archived": archived, "group_by": group_by,
            "hidden": hidden, "table": table, "details": details, "manage": manage_panel()}


def manage_panel() -> dict:
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


def wire_manage(dashboard: Dashboard, m: dict, common: dict) -> None:
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
