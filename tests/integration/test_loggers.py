"""Loggers: a run's metrics mirrored into TensorBoard, W&B (offline), trackio and MLflow, read back from each
tracker's own store and compared with metrics.jsonl; a tracker that fails or is missing; nanogpt-export-logs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config, run_cli

from nanogpt_runner.runs import trackers as loggers
from nanogpt_runner.runs.rundir import METRICS_FILE, MetricsTail, RunWriter, find_runs, read_run
from nanogpt_runner.runs.trackers import Tracker, Trackers, logger_problems, namespaced
from nanogpt_runner.viewer.synthetic import write_run

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("trackio")
pytest.importorskip("mlflow")


def assert_same(logged: dict[str, dict[int, float]], expected: dict[str, dict[int, float]]) -> None:
    assert sorted(logged) == sorted(expected)
    for key, by_step in expected.items():
        assert logged[key] == pytest.approx(by_step, rel=1e-6), key


def expected_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """What metrics.jsonl says each tracker must hold: {"train/loss": {step: value}, "val/loss": ...}."""
    lines, _ = MetricsTail(run_dir / METRICS_FILE).poll()
    expected: dict[str, dict[int, float]] = {}
    for line in lines:
        for key, value in namespaced(line).items():
            expected.setdefault(key, {})[line["step"]] = value
    return expected


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, corpus_path):
    """One tiny run through the real CLI with all four loggers, each writing only under a temp folder."""
    tmp = tmp_path_factory.mktemp("logged")
    overrides = [
        "model=tiny", "train.max_iters=10", "train.eval_interval=5", "train.eval_iters=1", "train.log_interval=5",
        "train.batch_size=2", "train.precision=fp32", "run.progress=false", f"data.path={corpus_path}",
        f"data.cache_dir={tmp / 'cache'}", f"run.root={tmp / 'outputs'}", "run.name=logged", "run.tags=[baseline,tiny]",
        "run.notes=first try", "logger=[tensorboard,wandb,trackio,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(tmp / "trackio"))
    result = run_cli(overrides, cwd=tmp)
    assert result.returncode == 0, result.stderr
    (run_dir,) = find_runs(tmp / "outputs")
    return tmp, run_dir


def test_tensorboard_holds_every_train_and_eval_number(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = logged_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    expected = expected_scalars(run_dir)
    assert {"train/loss", "train/mfu", "train/lr", "val/loss", "val/bpb", "eval/train_loss"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, by_step in expected.items():
        logged = {event.step: event.value for event in events.Scalars(key)}
        assert logged == pytest.approx(by_step, rel=1e-6), key
    # Event lines (here: the checkpoints saved) are text at their step, the whole line as JSON.
    lines = [line for line in MetricsTail(run_dir / METRICS_FILE).poll()[0] if line["kind"] == "event"]
    texts = events.Tensors("event/checkpoint/text_summary")
    assert lines and [t.step for t in texts] == [line["step"] for line in lines]
    assert json.loads(texts[-1].tensor_proto.string_val[0].decode())["path"] == lines[-1]["path"]
    status = events.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert status == "completed"


def test_wandb_offline_run_has_the_metrics_config_tags_and_status(logged_run):
    from wandb.proto import wandb_internal_pb2

    _, run_dir = logged_run
    (store,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[str, dict[int, float]] = {}
    config, run_record, summary = {}, None, {}
    for raw in wandb_records(store.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if "/" in key and isinstance(value, (int, float)):
                    history.setdefault(key, {})[row["_step"]] = value
        elif kind == "run":
            run_record = record.run
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    assert_same(history, expected_scalars(run_dir))
    assert run_record.display_name == "logged" and list(run_record.tags) == ["baseline", "tiny"]
    assert run_record.notes == "first try"
    assert config["optimizer.lr"] == read_run(run_dir)["config"]["optimizer"]["lr"]
    assert summary["status"] == "completed"


def wandb_records(data: bytes):
    """The protobuf records of an offline run's .wandb file: LevelDB's log format (32 KiB blocks of chunks,
    each a 7-byte header: CRC, little-endian length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) after the file's
    7-byte header ":W&B", magic 0xBEE1, version 0. wandb 0.31 ships no Python reader of its own."""
    assert data[:7] == b":W&B\xe1\xbe\x00"
    block, offset, pending = 32768, 7, b""
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(data[offset + 4:offset + 6], "little"), data[offset + 6]
        chunk, offset = data[offset + 7:offset + 7 + length], offset + 7 + length
        if kind == 0:  # zero-filled tail of the last block
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def test_trackio_store_has_the_metrics(logged_run):
    tmp, run_dir = logged_run
    (database,) = (tmp / "trackio").glob("*.db")
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT step, metrics FROM metrics WHERE run_name = 'logged'").fetchall()
    logged: dict[str, dict[int, float]] = {}
    for step, metrics in rows:
        for key, value in json.loads(metrics).items():
            if "/" in key and isinstance(value, (int, float)):
                logged.setdefault(key, {})[step] = value
    assert_same(logged, expected_scalars(run_dir))


def test_mlflow_store_has_the_metrics_params_tags_and_status(logged_run):
    from mlflow.tracking import MlflowClient

    tmp, run_dir = logged_run
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("nanogpt-runner").experiment_id])
    assert run.info.run_name == "logged" and run.info.status == "FINISHED"
    assert run.data.tags["status"] == "completed" and run.data.tags["tag.baseline"] == "true"
    assert run.data.params["model.n_layer"] == "2"
    for key, by_step in expected_scalars(run_dir).items():
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged == pytest.approx(by_step, rel=1e-6), key


def test_run_tags_and_notes_are_recorded_in_run_json(logged_run):
    _, run_dir = logged_run
    run = read_run(run_dir)["config"]["run"]
    assert run["tags"] == ["baseline", "tiny"] and run["notes"] == "first try"


class Broken(Tracker):
    name = "broken"

    def __init__(self):
        super().__init__(None)
        self.calls = 0

    def start(self, run):
        pass

    def scalars(self, step, values):
        self.calls += 1
        raise OSError("disk full")

    def text(self, step, tag, text):
        pass

    def finish(self, status):
        pass


class Recording(Broken):
    name = "recording"

    def scalars(self, step, values):
        self.calls += 1


def test_a_failing_tracker_warns_once_and_the_run_keeps_every_line(tmp_path):
    warnings: list[str] = []
    broken, recording = Broken(), Recording()
    writer = RunWriter(tmp_path, {"name": "demo", "config": {}})
    writer.subscribe(Trackers([broken, recording], loggers.RunIdentity.of(tmp_path, writer.record), warnings.append))
    for step in (1, 2, 3):
        writer.log("train", step=step, loss=1.0 / step)
    writer.close()
    assert len(warnings) == 1 and "logger broken failed (OSError: disk full)" in warnings[0]
    assert broken.calls == 1 and recording.calls == 3
    assert [line["step"] for line in MetricsTail(tmp_path / METRICS_FILE).poll()[0]] == [1, 2, 3]


def test_a_logger_without_its_package_is_refused_with_the_pip_line(monkeypatch, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["logger=[tensorboard,wandb]"])
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    assert logger_problems(cfg.logger) == ["logger=wandb needs the wandb package, which is not installed: "
                                           "pip install -e '.[wandb]' (or pip install wandb)"]


def test_no_logger_by_default(tiny_overrides):
    assert loggers.chosen(compose_config(tiny_overrides).logger) == []


def test_export_logs_replays_existing_runs_into_tensorboard_and_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("a", "b"):
        write_run(tmp_path / "runs" / name, steps=40, name=name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    for target in ("tensorboard", "mlflow"):
        result = subprocess.run([sys.executable, "-m", "nanogpt_runner.cli.export_logs", str(tmp_path / "runs"),
                                 "--to", target], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nanogpt-runner").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["a", "b"]
    for run in runs:
        run_dir = tmp_path / "runs" / run.info.run_name
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        for key, by_step in expected_scalars(run_dir).items():
            assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} == \
                pytest.approx(by_step, rel=1e-6)
            assert {e.step: e.value for e in events.Scalars(key)} == pytest.approx(by_step, rel=1e-6)


def test_export_logs_refuses_a_missing_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nanogpt_runner.cli.export_logs", str(tmp_path / "nope"), "--to",
                             "tensorboard"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not a folder" in result.stderr
