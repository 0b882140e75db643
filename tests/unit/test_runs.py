"""The run-directory contract: atomic run.json, append-only metrics, and a reader that survives torn
lines, garbage, growing, shrinking and vanishing files while reading only new bytes."""

from __future__ import annotations

import json
import sys
import time

import pytest

from nanogpt_runner.runs.rundir import (
    METRICS_FILE,
    PROGRESS_WRITE_EVERY_S,
    STALE_AFTER_S,
    MetricsTail,
    RunMetrics,
    RunReader,
    RunWriter,
    effective_status,
    find_runs,
    read_run,
)


def test_writer_records_status_and_metrics(tmp_path):
    writer = RunWriter(tmp_path, {"id": "abc", "name": "demo"})
    writer.update(status="running")
    writer.log("train", step=10, loss=2.5, grad_norm=float("nan"))
    writer.event("checkpoint", step=10)
    writer.close()
    run = read_run(tmp_path)
    assert (run["id"], run["name"], run["status"]) == ("abc", "demo", "running")
    assert isinstance(run["heartbeat"], float)
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["train", "event"]
    assert lines[0]["grad_norm"] == "nan"  # strict JSON on disk; the reader turns it back into a float


def test_run_json_rewrite_leaves_no_temporary_files(tmp_path):
    writer = RunWriter(tmp_path)
    for step in range(5):
        writer.update(status="running", step=step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, "run.json"]
    assert read_run(tmp_path)["step"] == 4


def test_progress_reaches_run_json_at_most_every_few_seconds(tmp_path, monkeypatch):
    """Training reports its step at every metrics line; run.json is rewritten (fsync) only every
    PROGRESS_WRITE_EVERY_S, and the run's ending writes the latest step whatever the clock says."""
    clock = [100.0]
    monkeypatch.setattr("nanogpt_runner.runs.rundir.time.monotonic", lambda: clock[0])
    writer = RunWriter(tmp_path)
    writer.update(status="running", step=0)
    writer.progress(step=5)
    assert read_run(tmp_path)["step"] == 0
    clock[0] += PROGRESS_WRITE_EVERY_S
    writer.progress(step=10)
    assert read_run(tmp_path)["step"] == 10
    writer.progress(step=15)
    writer.update(status="completed")
    assert (read_run(tmp_path)["status"], read_run(tmp_path)["step"]) == ("completed", 15)


def test_read_run_tolerates_missing_and_broken_files(tmp_path):
    assert read_run(tmp_path / "gone") is None
    (tmp_path / "run.json").write_text("{half")
    assert read_run(tmp_path) is None
    (tmp_path / "run.json").write_text("[1, 2]")
    assert read_run(tmp_path) is None


def write_bytes(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def test_tail_waits_for_a_torn_line_to_complete(tmp_path):
    path = tmp_path / METRICS_FILE
    tail = MetricsTail(path)
    assert tail.poll() == ([], False)  # no file yet
    write_bytes(path, b'{"kind": "train", "step": 1}\n{"kind": "train", "st')
    records, _ = tail.poll()
    assert [r["step"] for r in records] == [1]
    write_bytes(path, b'ep": 2}\n')
    records, _ = tail.poll()
    assert [r["step"] for r in records] == [2] and tail.garbage == 0


def test_tail_skips_and_counts_garbage(tmp_path):
    path = tmp_path / METRICS_FILE
    write_bytes(path, b'{"kind": "train", "step": 1}\nnot json\n\xff\xfe\n[1]\n{"no_kind": 1}\n\n')
    write_bytes(path, b'{"kind": "eval", "step": 1}\n')
    records, _ = MetricsTail(path).poll()
    assert [r["kind"] for r in records] == ["train", "eval"]
    tail = MetricsTail(path)
    tail.poll()
    assert tail.garbage == 4


def test_tail_reads_only_new_bytes(tmp_path):
    path = tmp_path / METRICS_FILE
    tail = MetricsTail(path)
    write_bytes(path, b'{"kind": "train", "step": 1}\n')
    tail.poll()
    offset = tail.offset
    write_bytes(path, b'{"kind": "train", "step": 2}\n')
    records, reset = tail.poll()
    assert [r["step"] for r in records] == [2] and not reset and tail.offset > offset


def test_tail_restarts_when_the_file_is_replaced(tmp_path):
    path = tmp_path / METRICS_FILE
    tail = MetricsTail(path)
    write_bytes(path, b'{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n')
    tail.poll()
    path.unlink()
    assert tail.poll() == ([], False)  # vanished: nothing, no error
    write_bytes(path, b'{"kind": "train", "step": 9}\n')
    records, reset = tail.poll()
    assert reset and [r["step"] for r in records] == [9]


def test_nan_strings_become_floats_again(tmp_path):
    writer = RunWriter(tmp_path)
    writer.log("train", step=1, loss=float("inf"))
    writer.close()
    [record], _ = MetricsTail(tmp_path / METRICS_FILE).poll()
    assert record["loss"] == float("inf")


def test_a_resume_event_supersedes_the_lines_after_its_step():
    metrics = RunMetrics()
    metrics.add([{"kind": "train", "step": s} for s in (10, 20, 30)] + [{"kind": "eval", "step": 30}])
    metrics.add([{"kind": "event", "event": "resume", "step": 20}, {"kind": "train", "step": 30}])
    assert [r["step"] for r in metrics.train] == [10, 20, 30]
    assert metrics.eval == []


def test_reader_follows_a_growing_run(tmp_path):
    writer = RunWriter(tmp_path, {"name": "live"})
    writer.update(status="running")
    reader = RunReader(tmp_path)
    assert reader.refresh() and reader.info["name"] == "live"
    assert not reader.refresh()
    writer.log("train", step=1, loss=3.0)
    assert reader.refresh() and len(reader.metrics.train) == 1
    writer.close()


def test_a_running_run_without_heartbeat_is_stalled():
    now = time.time()
    assert effective_status({"status": "running", "heartbeat": now}, now) == "running"
    assert effective_status({"status": "running", "heartbeat": now - STALE_AFTER_S - 1}, now) == "stalled"
    assert effective_status({"status": "completed", "heartbeat": 0}, now) == "completed"


def test_find_runs_finds_single_runs_and_sweep_jobs(tmp_path):
    for rel in ("2026-01-01/10-00-00_a", "multirun/2026-01-01/11-00-00/0", "multirun/2026-01-01/11-00-00/1"):
        RunWriter(tmp_path / rel).update(status="completed")
    (tmp_path / "2026-01-01/10-00-00_a/checkpoints").mkdir()
    (tmp_path / "empty").mkdir()
    found = sorted(p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path))
    assert found == ["2026-01-01/10-00-00_a", "multirun/2026-01-01/11-00-00/0", "multirun/2026-01-01/11-00-00/1"]


def test_runs_module_imports_no_torch(tmp_path):
    import subprocess

    code = "import sys, nanogpt_runner.runs.rundir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path):
    from nanogpt_runner.fsutil import write_atomic, write_json_atomic

    write_json_atomic(tmp_path / "run.json", {"status": "running"})
    write_atomic(tmp_path / "run.json", '{"status": "completed"}')
    assert read_run(tmp_path) == {"status": "completed"}
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "folder", "text")  # the rename fails: a folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "run.json"]
