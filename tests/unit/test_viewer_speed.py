"""What keeps the viewer's refresh cheap gives the same answers as doing it all again: a growing run's frame is
extended with its new lines only, differing keys are remembered per set of configs, and the runs table's cells
carry their full value on hover (a number column as escaped HTML spans)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd

from nanogpt_runner.analysis.records import RunRecord, differing_keys
from nanogpt_runner.runs.rundir import RunReader
from nanogpt_runner.viewer.dashboard import column_types, table_value
from nanogpt_runner.viewer.synthetic import config, write_run


def train_line(step: int, **extra) -> dict:
    return {"kind": "train", "step": step, "tokens": step * 100, "loss": 2.0 - step / 1000, "tok_per_s": 1000.0,
            "elapsed_s": step * 0.1, **extra}


def record_of(reader: RunReader) -> RunRecord:
    return RunRecord("run", reader.run_dir, reader.info, reader.metrics)


def fresh_frame(record: RunRecord, kind: str = "train") -> pd.DataFrame:
    return RunRecord(record.id, record.path, record.info, record.metrics).frame(kind)


def test_a_growing_runs_frame_is_extended_and_equals_a_fresh_conversion(tmp_path):
    writer = write_run(tmp_path / "run", 30, status="running")
    writer.update(flops_per_token=10.0)
    reader = RunReader(tmp_path / "run")
    reader.refresh()
    record = record_of(reader)
    before = record.frame("train")
    writer.log("train", step=31, tokens=3100, loss=float("nan"), tok_per_s=900.0, elapsed_s=3.1)
    writer.log("train", step=32, tokens=3200, loss=1.4, tok_per_s=950.0, elapsed_s=3.2)
    reader.refresh()
    after = record.frame("train")
    assert after is not before and len(after) == len(before) + 2
    pd.testing.assert_frame_equal(after, fresh_frame(record))
    assert after.diverged.iloc[-2] and after.flops.iloc[-1] == 32000.0
    assert record.frame("train") is after  # nothing new: the same frame

    writer.log("train", step=33, tokens=3300, loss=1.3, new_metric=7.0)  # a field the frame has no column for
    reader.refresh()
    grown = record.frame("train")
    assert grown.new_metric.iloc[-1] == 7.0 and math.isnan(grown.new_metric.iloc[0])
    pd.testing.assert_frame_equal(grown, fresh_frame(record))
    writer.close()


def test_a_resumed_runs_frame_is_converted_again(tmp_path):
    writer = write_run(tmp_path / "run", 40, status="running")
    reader = RunReader(tmp_path / "run")
    reader.refresh()
    record = record_of(reader)
    assert record.frame("train").step.max() == 40
    writer.log("event", event="resume", step=20)  # the lines after step 20 are superseded
    writer.log("train", step=21, tokens=2100, loss=1.9)
    reader.refresh()
    frame = record.frame("train")
    assert list(frame.step.iloc[-2:]) == [20, 21] and frame.step.max() == 21
    pd.testing.assert_frame_equal(frame, fresh_frame(record))
    writer.close()


def test_differing_keys_follow_a_config_that_changed(tmp_path):
    runs = []
    for i, lr in enumerate([1e-3, 1e-3]):
        writer = write_run(tmp_path / f"r{i}", 5, cfg=config(**{"optimizer.lr": lr}))
        writer.close()
        reader = RunReader(tmp_path / f"r{i}")
        reader.refresh()
        runs.append(RunRecord(f"r{i}", reader.run_dir, reader.info, reader.metrics))
    assert differing_keys(runs) == []
    changed = copy.deepcopy(runs[1].info)
    changed["config"]["optimizer"]["lr"] = 3e-3
    runs[1].info = changed
    assert differing_keys(runs) == ["optimizer.lr"]
    again = runs[1].settings()
    runs[1].info = dict(runs[1].info)  # run.json read again, the same config: the same settings object
    assert runs[1].settings() is again


def test_number_columns_show_4_digits_with_the_full_value_on_hover_and_escape_text():
    frame = pd.DataFrame({"name": ["<b>a</b>", "b"], "best val loss": [1.23456789, np.nan],
                          "steps": [1200, 5], "optimizer.lr": [0.003, "<img src=x>"]})
    value = table_value(frame)
    shown = value["metadata"]["display_value"]
    assert shown[0][0] == "<b>a</b>" and column_types(frame) == ["str", "html", "html", "html"]  # text stays text
    assert shown[0][1] == '<span title="1.23456789">1.235</span>' and shown[1][1] == ""
    assert shown[0][2] == '<span title="1200">1200</span>'
    assert shown[1][3] == "&lt;img src=x&gt;"  # a run folder's text in a number column: escaped
    assert value["data"][0][1] == 1.23456789 and value["data"][1][1] is None  # sorting and the API: full values
