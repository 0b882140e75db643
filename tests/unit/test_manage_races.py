"""The viewer's Save/Archive and Delete against a hostile runs folder: a planted temporary does not redirect the
annotations write, and a parent swapped for a symlink between the checks and the delete deletes nothing outside."""

from __future__ import annotations

import os

import pytest

from nanogpt_runner.fsutil import TMP_PREFIX
from nanogpt_runner.runs.annotations import ANNOTATIONS_FILE
from nanogpt_runner.viewer import manage
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import write_run


def test_a_planted_annotation_temporary_does_not_redirect_save(tmp_path):
    outside = tmp_path / "bashrc"
    outside.write_text("original\n")
    write_run(tmp_path / "root" / "a", steps=10, name="alpha")
    store = RunStore(tmp_path / "root", min_rescan_s=0)
    store.poll()
    run_id = next(iter(store.entries))
    (tmp_path / "root" / "a" / f"{TMP_PREFIX}{ANNOTATIONS_FILE}.{os.getpid()}").symlink_to(outside)
    manage.save(store, run_id, "baseline", "$(touch marker)")
    manage.set_archived(store, run_id, True)
    assert outside.read_text() == "original\n"
    assert manage.current(store, run_id).tags == ["baseline"] and manage.current(store, run_id).archived


def test_a_parent_swapped_for_a_symlink_after_the_checks_deletes_nothing_outside(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_run(root / "day" / "run", steps=10, name="victim")
    (outside / "run").mkdir(parents=True)
    (outside / "run" / "precious").write_text("keep")
    store = RunStore(root, min_rescan_s=0)
    store.poll()
    run_id = next(iter(store.entries))
    checked = manage.deletable

    def check_then_swap(store_, run_id_):
        answer = checked(store_, run_id_)
        os.rename(root / "day", tmp_path / "moved")  # the race: after every path-based check
        (root / "day").symlink_to(outside)
        return answer

    monkeypatch.setattr(manage, "deletable", check_then_swap)
    with pytest.raises(manage.ManageError, match="could not be deleted"):
        manage.delete(store, run_id)
    assert (outside / "run" / "precious").read_text() == "keep"


def test_a_finished_run_is_deleted_and_no_trash_is_left(tmp_path):
    root = tmp_path / "root"
    write_run(root / "day" / "run", steps=10, name="done")
    store = RunStore(root, min_rescan_s=0)
    store.poll()
    run_id = next(iter(store.entries))
    assert "bytes" in manage.deletable(store, run_id)[1] or "KB" in manage.deletable(store, run_id)[1]
    manage.delete(store, run_id)
    assert sorted(p.name for p in root.rglob("*")) == ["day"]
