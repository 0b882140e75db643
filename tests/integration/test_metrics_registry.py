"""The metrics registry (runs.METRICS) is the one list of what a metrics line may hold: every key the
trainer writes is in it, and every reader (analysis, report, viewer) takes its columns from it."""

from __future__ import annotations

import json

from conftest import run_cli

from nanogpt_runner.analysis.records import load_runs, summarize
from nanogpt_runner.analysis.report import CSV_FIELDS
from nanogpt_runner.runs.rundir import EVENT, METRIC, METRICS, METRICS_FILE, find_runs, metric_names, plots, summarized
from nanogpt_runner.viewer.dashboard import STAT_COLUMNS
from nanogpt_runner.viewer.synthetic import write_run


def unregistered(path) -> set[tuple[str, str]]:
    """(line kind, key) pairs of a metrics file that the registry does not list for that kind."""
    out = set()
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out |= {(record["kind"], key) for key in record if key not in metric_names(record["kind"])}
    return out


def test_every_key_a_real_run_writes_is_registered(tmp_path, tiny_overrides):
    result = run_cli([*tiny_overrides, "train.ckpt_interval=10"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = find_runs(tmp_path / "outputs")
    kinds = {json.loads(line)["kind"] for line in (run_dir / METRICS_FILE).read_text().splitlines()}
    assert kinds == {"train", "eval", "event"}
    assert unregistered(run_dir / METRICS_FILE) == set()


def test_synthetic_runs_write_only_registered_keys(tmp_path):
    write_run(tmp_path / "a", 30, eval_every=10).close()
    assert unregistered(tmp_path / "a" / METRICS_FILE) == set()


def test_the_registry_is_well_formed():
    assert len(METRIC) == len(METRICS)  # names are unique
    for metric in METRICS:
        assert metric.kinds and set(metric.kinds) <= {"train", "eval", "event"}, metric
        assert metric.better in (None, "lower", "higher"), metric
        assert metric.aggregate in ("last", "max", "best", "steady"), metric
        assert metric.aggregate != "best" or metric.better, f"{metric.name}: best needs a direction"
        assert metric.summary is None or metric.kinds != (EVENT,), f"{metric.name}: events are not summarized"
    summaries = [m.summary for m in summarized()]
    assert len(set(summaries)) == len(summaries)


def test_readers_take_their_columns_from_the_registry():
    summaries = [m.summary for m in summarized()]
    assert CSV_FIELDS[4:4 + len(summaries)] == summaries  # after run, name, sweep, status
    assert list(STAT_COLUMNS) == [m.column for m in summarized() if m.column]
    assert [m.name for m in plots()["loss"]] == ["loss", "val_loss"]


def test_a_metric_the_registry_does_not_know_is_kept_not_dropped(tmp_path):
    writer = write_run(tmp_path / "a", 10, eval_every=5, status="running")
    writer.log("train", step=11, tokens=11 * 384, loss=1.0, new_metric=0.25, note="words are not numbers")
    writer.close()
    [run] = load_runs(tmp_path)
    frame = run.frame("train")
    assert frame.new_metric.iloc[-1] == 0.25 and frame.new_metric.isna().sum() == 10
    assert "note" not in frame.columns
    assert summarize(run)["steps"] == 11
