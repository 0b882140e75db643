"""The viewer's run store: every run under the root, kept current by reading only what changed, and
never brought down by a damaged, vanishing or growing run folder."""

from __future__ import annotations

import json
import os
import time

from nanogpt_runner.runs.rundir import METRICS_FILE, RUN_FILE, RunWriter
from nanogpt_runner.viewer.store import RunStore, last_train_line
from nanogpt_runner.viewer.synthetic import write_run


def store_of(root) -> RunStore:
    store = RunStore(root, min_rescan_s=0.0)
    store.poll()
    return store


def test_single_runs_and_sweep_jobs_are_found_recursively(tmp_path):
    write_run(tmp_path / "2026-01-01" / "10-00-00_tiny", 5).close()
    for job in range(2):
        write_run(tmp_path / "multirun" / "2026-01-01" / "11-00-00" / str(job), 5,
                  sweep={"dir": "/elsewhere/multirun/2026-01-01/11-00-00", "job": job},
                  record={"overrides": ["model=tiny", f"optimizer.lr={job + 1}e-3", "train.grad_accum=4"]}).close()
    store = store_of(tmp_path)
    assert sorted(store.entries) == ["2026-01-01/10-00-00_tiny", "multirun/2026-01-01/11-00-00/0",
                                     "multirun/2026-01-01/11-00-00/1"]
    sweep_job = store.get("multirun/2026-01-01/11-00-00/1").record
    assert (sweep_job.sweep, sweep_job.label) == ("multirun/2026-01-01/11-00-00", "lr=2e-3")  # what sets it apart


def test_finished_runs_are_listed_without_reading_their_curves_until_selected(tmp_path):
    write_run(tmp_path / "done", 50).close()
    store = store_of(tmp_path)
    record = store.get("done").record
    assert record.metrics is None and record.last_train["step"] == 50
    store.load(["done"])
    assert len(record.metrics.train) == 50


def test_a_running_run_is_followed_line_by_line(tmp_path):
    writer = write_run(tmp_path / "live", 10, status="running")
    store = store_of(tmp_path)
    entry = store.get("live")
    version = entry.version
    writer.log("train", step=11, loss=1.0)
    assert store.poll() is True
    assert entry.record.metrics.train[-1]["step"] == 11 and entry.version > version
    assert store.poll() is False  # nothing new: nothing read, nothing changed
    writer.close()


def test_a_torn_last_line_waits_for_its_newline(tmp_path):
    writer = write_run(tmp_path / "live", 3, status="running")
    writer.close()
    store = store_of(tmp_path)
    with open(tmp_path / "live" / METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')
    store.poll()
    assert store.get("live").record.metrics.train[-1]["step"] == 3
    with open(tmp_path / "live" / METRICS_FILE, "a") as f:
        f.write('ss": 1.0}\n')
    store.poll()
    assert store.get("live").record.metrics.train[-1]["step"] == 4


def test_garbage_and_non_utf8_lines_are_skipped_with_a_note(tmp_path):
    writer = write_run(tmp_path / "live", 3, status="running")
    writer.close()
    with open(tmp_path / "live" / METRICS_FILE, "ab") as f:
        f.write(b"this is not json\n\xff\xfe\x00 binary\n[1, 2]\n")
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 1.0}).encode() + b"\n")
    store = store_of(tmp_path)
    entry = store.get("live")
    assert entry.record.metrics.train[-1]["step"] == 4
    assert entry.notes == [f"3 unreadable line(s) in {METRICS_FILE} skipped"]


def test_empty_or_missing_metrics_and_unreadable_run_json_are_shown_not_fatal(tmp_path):
    RunWriter(tmp_path / "empty", {"name": "empty", "status": "running"}).update()
    (tmp_path / "nometrics").mkdir()
    (tmp_path / "nometrics" / RUN_FILE).write_text(json.dumps({"name": "nometrics", "status": "failed"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RUN_FILE).write_text("{half a json")
    store = store_of(tmp_path)
    assert store.get("empty").record.metrics.train == []
    assert store.get("nometrics").record.metrics.train == []
    broken = store.get("broken")
    assert broken.record.info["status"] == "unknown" and "run.json is unreadable" in broken.notes[0]


def test_a_run_deleted_while_viewing_disappears_and_a_new_one_appears(tmp_path):
    write_run(tmp_path / "a", 5).close()
    store = store_of(tmp_path)
    (tmp_path / "a" / RUN_FILE).unlink()
    write_run(tmp_path / "b", 5).close()
    store.rescan_soon()
    store.poll()
    assert list(store.entries) == ["b"]


def test_a_rewritten_metrics_file_is_read_again_from_the_start(tmp_path):
    write_run(tmp_path / "a", 20, status="running").close()
    store = store_of(tmp_path)
    path = tmp_path / "a" / METRICS_FILE
    path.write_text(json.dumps({"kind": "train", "step": 1, "loss": 9.0}) + "\n")
    store.poll()
    assert [r["step"] for r in store.get("a").record.metrics.train] == [1]


def test_a_running_run_that_stopped_beating_is_shown_as_stalled(tmp_path):
    writer = write_run(tmp_path / "a", 5, status="running")
    writer.close()
    record = json.loads((tmp_path / "a" / RUN_FILE).read_text())
    record["heartbeat"] = time.time() - 3600
    (tmp_path / "a" / RUN_FILE).write_text(json.dumps(record))
    assert store_of(tmp_path).get("a").record.status == "stalled"


def test_ids_the_page_makes_up_are_never_resolved(tmp_path):
    write_run(tmp_path / "a", 5).close()
    store = store_of(tmp_path)
    for made_up in ["../a", "/etc", "a/../../x", None, 3]:
        assert store.get(made_up) is None
    store.load(["../../etc"])  # ignored, not an error


def test_the_newest_train_line_is_found_from_the_end_of_a_long_file(tmp_path):
    path = tmp_path / METRICS_FILE
    with open(path, "w") as f:
        for step in range(1, 2001):
            f.write(json.dumps({"kind": "train", "step": step, "loss": 1.0, "pad": "x" * 100}) + "\n")
        for _ in range(100):  # a long run of evals after the last train line: the window must widen
            f.write(json.dumps({"kind": "eval", "step": 2000, "val_loss": 1.0, "pad": "y" * 100}) + "\n")
    assert last_train_line(path)["step"] == 2000
    assert last_train_line(tmp_path / "missing.jsonl") is None
    os.truncate(path, 0)
    assert last_train_line(path) is None
