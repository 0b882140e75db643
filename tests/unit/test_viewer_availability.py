"""Availability caps of the viewer's readers and page: a hostile run folder (a number past 64 bits, 300,000
metric names) or request (thousands of run ids) costs a bounded amount and never breaks the page for others."""

from __future__ import annotations

import json

import orjson

from nanogpt_runner.analysis.records import summarize
from nanogpt_runner.runs.rundir import MAX_EXTRA_METRICS, METRICS_FILE, RUN_FILE, MetricsTail, read_run
from nanogpt_runner.viewer.dashboard import Dashboard
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import write_run

HUGE = "1" + "0" * 20  # 10**20: past a 64-bit integer
ENORMOUS = "9" * 5000  # past Python's int parsing limit of 4,300 digits


def _plant_bigints(run_dir) -> None:
    text = (run_dir / RUN_FILE).read_text()
    info = json.loads(text)
    info["summary"]["steps"] = 0  # replaced below by the raw text, as a crafted file would hold it
    info["n_params"] = 0
    text = json.dumps(info).replace('"steps": 0', f'"steps": {HUGE}').replace('"n_params": 0',
                                                                             f'"n_params": {ENORMOUS}')
    (run_dir / RUN_FILE).write_text(text)
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(f'{{"kind": "train", "step": {HUGE}, "loss": 1.0, "tokens": {ENORMOUS}}}\n')


def test_integers_past_64_bits_are_read_as_floats_and_the_table_stays_json(tmp_path):
    write_run(tmp_path / "hostile", 20, start_time=2).close()
    write_run(tmp_path / "fine", 20, start_time=1).close()
    _plant_bigints(tmp_path / "hostile")
    info = read_run(tmp_path / "hostile")
    assert info["summary"]["steps"] == 1e20 and isinstance(info["summary"]["steps"], float)
    records, _ = MetricsTail(tmp_path / "hostile" / METRICS_FILE).poll()
    assert records[-1]["step"] == 1e20 and records[-1]["tokens"] == float("inf")

    store = RunStore(tmp_path, min_rescan_s=0.0)
    store.poll()
    dashboard = Dashboard(store, min_poll_s=0.0)
    frame, _ = dashboard.table()
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")  # what /runs sends
    assert [row["folder"] for row in orjson.loads(orjson.dumps(rows))] == ["hostile", "fine"]
    orjson.dumps(dashboard.compare(["hostile", "fine"]).analysis)
    orjson.dumps([summarize(store.get(run_id).record) for run_id in ("hostile", "fine")])  # curves loaded now


def test_a_metrics_file_with_300000_names_keeps_the_first_64_unregistered_ones(tmp_path):
    run = tmp_path / "wide"
    write_run(run, 5, status="running").close()
    line = {"kind": "train", "step": 6, "loss": 1.0, **{f"k{i}": i for i in range(300_000)}}
    with open(run / METRICS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.write(json.dumps({"kind": "train", "step": 7, "loss": 0.9, "another_new_name": 1}) + "\n")
    store = RunStore(tmp_path, min_rescan_s=0.0)
    store.poll()
    entry = store.get("wide")
    record = entry.record
    extra = {key for line in record.metrics.train for key in line} - set(json.loads(
        (run / METRICS_FILE).read_text().splitlines()[0]))
    assert len(extra) <= MAX_EXTRA_METRICS
    assert len(record.frame("train").columns) < 100
    assert any("unregistered metrics dropped" in note for note in entry.notes)
    frame, _ = Dashboard(store, min_poll_s=0.0).table()
    assert list(frame["folder"]) == ["wide"]
