"""nanogpt-export-logs takes where the data goes from its command line and the environment, never from a run's
run.json; a run.json holding ${...} is refused (never resolved), and a run folder holding a symlink is not written."""

from __future__ import annotations

import json

import pytest

from nanogpt_runner.cli import export_logs
from nanogpt_runner.runs import trackers


class Recorder(trackers.Tracker):
    name, module = "recorder", "json"
    seen: list = []

    def start(self, run):
        Recorder.seen.append(("start", dict(self.settings), run.notes))

    def scalars(self, step, values):
        Recorder.seen.append(("scalars", step))

    def text(self, step, tag, text):
        pass

    def finish(self, status):
        Recorder.seen.append(("finish", status))


@pytest.fixture
def recorder(monkeypatch):
    Recorder.seen = []
    monkeypatch.setitem(trackers.TRACKERS, "tensorboard", Recorder)
    return Recorder.seen


def write_run(run, config):
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed", "config": config}))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.0}) + "\n")


def test_the_runs_own_destination_is_ignored(tmp_path, recorder):
    write_run(tmp_path / "run", {"logger": {"tensorboard": {"enabled": True, "dir": "../../../outside"}},
                                 "run": {"notes": "plain"}})
    assert trackers.replay(tmp_path / "run", "tensorboard") == 1
    assert recorder[0] == ("start", {"enabled": False, "dir": "tensorboard"}, "plain")


def test_an_interpolation_in_run_json_is_refused_not_sent(tmp_path, recorder, monkeypatch):
    monkeypatch.setenv("NANOGPT_TEST_SECRET", "hunter2")
    write_run(tmp_path / "run", {"run": {"notes": "${oc.env:NANOGPT_TEST_SECRET}"}})
    warnings = []
    assert trackers.replay(tmp_path / "run", "tensorboard", warn=warnings.append) == 0
    assert recorder == [] and len(warnings) == 1 and "never interpolated" in warnings[0]
    assert "hunter2" not in warnings[0]


def test_a_run_folder_holding_a_symlink_is_not_replayed(tmp_path, recorder):
    outside = tmp_path / "outside"
    outside.mkdir()
    write_run(tmp_path / "run", {})
    (tmp_path / "run" / "tensorboard").symlink_to(outside)
    warnings = []
    assert trackers.replay(tmp_path / "run", "tensorboard", warn=warnings.append) == 0
    assert recorder == [] and "holds a symlink" in warnings[0] and not list(outside.iterdir())


def test_the_command_line_names_the_destinations():
    args = export_logs.argument_parser().parse_args(["runs", "--to", "mlflow", "--project", "p",
                                                     "--tracking-uri", "sqlite:///x.db"])
    loggers = export_logs.destinations(args)
    assert (loggers.wandb.project, loggers.trackio.project, loggers.mlflow.tracking_uri) == ("p", "p", "sqlite:///x.db")
    default = export_logs.destinations(export_logs.argument_parser().parse_args(["runs", "--to", "mlflow"]))
    assert default.mlflow.tracking_uri is None  # MLFLOW_TRACKING_URI, else MLflow's own default
