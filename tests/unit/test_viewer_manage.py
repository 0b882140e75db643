"""Runs a person manages from the viewer: tags and notes (run.tags/run.notes, then the annotations.json
sidecar), filter by tag, archive, and delete (finished runs only, confirmed by name and size, never
a path from the page, refused on a read-only folder)."""

from __future__ import annotations

import errno
import fcntl
import json
import os

import pytest

from nanogpt_runner.runs import annotations
from nanogpt_runner.runs.annotations import ANNOTATIONS_FILE, AnnotationError
from nanogpt_runner.runs.rundir import LOCK_FILE
from nanogpt_runner.viewer import manage
from nanogpt_runner.viewer.dashboard import Dashboard
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import config, write_run


@pytest.fixture
def dashboard(tmp_path):
    write_run(tmp_path / "a", steps=30, name="alpha", cfg=config(**{"run.tags": ["baseline"], "run.notes": "first"}))
    write_run(tmp_path / "b", steps=30, name="beta")
    write_run(tmp_path / "c", steps=30, name="gamma", status="running")
    board = Dashboard(RunStore(tmp_path, min_rescan_s=0), min_poll_s=0)
    board.refresh()
    return board


def names(board: Dashboard, **filters) -> list[str]:
    return sorted(r.name for r in board.listed(**filters))


def test_tags_and_notes_from_the_command_line_are_the_starting_annotations(dashboard):
    marks = dashboard.annotations("a")
    assert marks.tags == ["baseline"] and marks.notes == "first" and not marks.archived
    assert names(dashboard, tags=["baseline"]) == ["alpha"]


def test_edited_tags_and_note_go_to_the_sidecar_and_filter_the_table(dashboard, tmp_path):
    manage.save(dashboard.store, "b", "lr-sweep, good", "better than alpha")
    dashboard.refresh()
    assert json.loads((tmp_path / "b" / ANNOTATIONS_FILE).read_text())["tags"] == ["lr-sweep", "good"]
    assert dashboard.tags() == ["baseline", "good", "lr-sweep"]
    assert names(dashboard, tags=["good", "baseline"]) == ["alpha", "beta"]
    assert names(dashboard, text="better than") == ["beta"]
    frame, _ = dashboard.table()
    assert frame.set_index("folder").loc["b", "tags"] == "lr-sweep good"


@pytest.mark.parametrize("tags", ["<script>", "a/b", "../x", "x" * 65])
def test_a_tag_that_is_not_a_plain_name_is_refused(dashboard, tags):
    with pytest.raises(AnnotationError, match="Not a tag"):
        manage.save(dashboard.store, "a", tags, "")


def test_an_overlong_note_or_an_unknown_run_is_refused(dashboard, tmp_path):
    with pytest.raises(AnnotationError, match="characters"):
        manage.save(dashboard.store, "a", "", "x" * 5000)
    for run_id in ("../a", str(tmp_path / "a"), "nope", None, ["a"]):
        with pytest.raises(manage.ManageError, match="Pick a run"):
            manage.save(dashboard.store, run_id, "", "")


def test_a_hostile_sidecar_is_ignored_field_by_field(dashboard, tmp_path):
    (tmp_path / "a" / ANNOTATIONS_FILE).write_text(json.dumps({"tags": ["ok", "<b>bad</b>", 3], "notes": ["x"],
                                                                "archived": "yes"}))
    marks = annotations.read(tmp_path / "a", dashboard.store.get("a").record.info)
    assert marks.tags == ["ok"] and marks.notes == "first" and marks.archived is False


def test_archive_hides_a_run_until_shown_again(dashboard):
    manage.set_archived(dashboard.store, "a", True)
    dashboard.refresh()
    assert names(dashboard) == ["beta", "gamma"]
    assert names(dashboard, archived=True) == ["alpha", "beta", "gamma"]
    manage.set_archived(dashboard.store, "a", False)
    dashboard.refresh()
    assert names(dashboard) == ["alpha", "beta", "gamma"]


def test_delete_names_the_run_and_its_size_then_removes_only_that_folder(dashboard, tmp_path):
    folder, question = manage.deletable(dashboard.store, "b")
    assert folder == tmp_path / "b"
    assert question.startswith("Delete run beta (folder b, ") and "KB" in question
    assert manage.delete(dashboard.store, "b") == "Deleted beta (b)."
    assert not (tmp_path / "b").exists() and (tmp_path / "a").exists()
    assert names(dashboard) == ["alpha", "gamma"]


def test_a_running_run_is_never_deleted(dashboard, tmp_path):
    with pytest.raises(manage.ManageError, match="still running"):
        manage.delete(dashboard.store, "c")
    with open(tmp_path / "a" / LOCK_FILE, "w") as lock:  # a live nanogpt-run holds the run directory's lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(manage.ManageError, match="still running"):
            manage.delete(dashboard.store, "a")
    assert (tmp_path / "a").exists() and (tmp_path / "c").exists()


def test_a_run_reached_through_a_symlink_is_not_deleted(tmp_path):
    write_run(tmp_path / "outside" / "run", steps=10, name="outside")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "link")
    store = RunStore(tmp_path / "root", min_rescan_s=0)
    store.poll()
    for run_id in list(store.entries):
        with pytest.raises(manage.ManageError):
            manage.delete(store, run_id)
    assert (tmp_path / "outside" / "run").exists()


def test_a_read_only_runs_folder_is_refused_with_a_message(dashboard, monkeypatch):
    """As a read-only mount behaves (chmod cannot show it: the tests may run as root)."""
    def read_only(*_args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(annotations, "write_json_atomic", read_only)
    monkeypatch.setattr(manage.os, "access", lambda *_args: False)
    with pytest.raises(AnnotationError, match="read-only"):
        manage.set_archived(dashboard.store, "a", True)
    with pytest.raises(manage.ManageError, match="read-only"):
        manage.delete(dashboard.store, "a")
    assert dashboard.store.get("a").record.path.exists()
