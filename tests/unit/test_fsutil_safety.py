"""fsutil holds the rule "a run folder is data": every test plants what a hostile run folder could hold and
asserts that the file outside is unchanged and that nothing is left behind."""

from __future__ import annotations

import errno
import json
import os

import pytest

from nanogpt_runner import fsutil
from nanogpt_runner.runs.rundir import RunWriter, read_run


def test_open_regular_refuses_a_symlink_and_a_fifo(tmp_path, outside):
    (tmp_path / "link").symlink_to(outside)
    os.mkfifo(tmp_path / "fifo")
    assert fsutil.open_regular(tmp_path / "link") is None
    assert fsutil.open_regular(tmp_path / "fifo") is None


def test_append_through_a_planted_symlink_is_refused(tmp_path, outside):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(OSError):
        RunWriter(run)
    assert outside.read_text() == "original\n"


def test_write_atomic_replaces_a_symlink_instead_of_following_it(tmp_path, outside):
    (tmp_path / "run.json").symlink_to(outside)
    fsutil.write_json_atomic(tmp_path / "run.json", {"status": "ok"})
    assert outside.read_text() == "original\n"
    assert not (tmp_path / "run.json").is_symlink() and read_run(tmp_path) == {"status": "ok"}


def test_a_planted_temporary_does_not_redirect_the_write(tmp_path, outside):
    """The old temporary name was predictable (.tmp-NAME.<pid>); a symlink planted there is left alone."""
    planted = tmp_path / f"{fsutil.TMP_PREFIX}annotations.json.{os.getpid()}"
    planted.symlink_to(outside)
    fsutil.write_json_atomic(tmp_path / "annotations.json", {"tags": ["a"]})
    assert outside.read_text() == "original\n"
    assert json.loads((tmp_path / "annotations.json").read_text()) == {"tags": ["a"]}


def test_any_failure_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    fsutil.write_json_atomic(target, {"status": "running"})

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        fsutil.write_json_atomic(target, {"status": "completed"})
    monkeypatch.setattr(os, "fsync", lambda _fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        fsutil.write_json_atomic(target, {"status": "completed"})
    assert read_run(tmp_path) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_overwrite_in_place_never_tears_the_file(tmp_path, outside):
    target = tmp_path / "run.json"
    fsutil.write_json_atomic(target, {"status": "running", "error": "x" * 50})
    fsutil.overwrite_json(target, {"status": "failed"})
    assert read_run(tmp_path) == {"status": "failed"}
    with pytest.raises(OSError):  # longer than what is there: refused whole, the file as it was
        fsutil.overwrite_json(target, {"status": "failed", "error": "y" * 500})
    assert read_run(tmp_path) == {"status": "failed"}
    (tmp_path / "link.json").symlink_to(outside)
    with pytest.raises(OSError):
        fsutil.overwrite_json(tmp_path / "link.json", {})
    assert outside.read_text() == "original\n"


def test_refuse_symlinks_names_the_link_anywhere_in_the_folder(tmp_path, outside):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000001").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    fsutil.refuse_symlinks(run)  # a plain folder passes
    (run / "checkpoints" / "step_0000001" / "model.pt").symlink_to(outside)
    with pytest.raises(fsutil.UnsafeFolder, match="model.pt"):
        fsutil.refuse_symlinks(run)


def test_remove_under_deletes_the_run_through_directory_descriptors(tmp_path):
    root = tmp_path / "runs"
    (root / "day" / "run" / "checkpoints").mkdir(parents=True)
    (root / "day" / "run" / "run.json").write_text("{}")
    assert fsutil.size_under(root, "day/run") == 2
    fsutil.remove_under(root, "day/run")
    assert sorted(p.name for p in root.iterdir()) == ["day"] and not list((root / "day").iterdir())


def test_remove_under_refuses_a_parent_swapped_for_a_symlink(tmp_path):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    (elsewhere / "run").mkdir(parents=True)
    (elsewhere / "run" / "precious").write_text("keep")
    root.mkdir()
    (root / "day").symlink_to(elsewhere)  # the parent, swapped after every check a path-based delete made
    with pytest.raises(OSError):
        fsutil.remove_under(root, "day/run")
    with pytest.raises(OSError):
        fsutil.size_under(root, "day/run")
    assert (elsewhere / "run" / "precious").read_text() == "keep"
    (root / "link").symlink_to(elsewhere / "run")
    with pytest.raises(fsutil.UnsafeFolder):
        fsutil.remove_under(root, "link")
    assert (elsewhere / "run" / "precious").read_text() == "keep"
