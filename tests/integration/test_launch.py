"""How a launch fails before or around training: a run directory that cannot be made, a run directory
another live run is training into, a block too long for the data, a full disk while recording a failure.
Each is one line naming the problem, a non-zero exit, and nothing left behind or half-written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose_config, run_cli

from nanogpt_runner import fsutil
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.runs.rundir import METRICS_FILE, read_run
from nanogpt_runner.train.worker import execute


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_a_run_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, tiny_overrides, where):
    (tmp_path / "a_file").write_text("not a folder")
    run_dir = tmp_path / "a_file" / "run" if where == "under_a_file" else Path("/proc/nanogpt-runner-test/run")
    result = run_cli([*tiny_overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot use hydra.run.dir={run_dir} as the run directory: ")
    assert "Traceback" not in result.stdout + result.stderr


def test_a_block_far_beyond_the_data_is_refused_up_front(tmp_path, tiny_overrides):
    """tiny-shakespeare's val split holds about 111,000 characters: 12 sequences of 100,000 do not fit."""
    result = run_cli([*tiny_overrides, "model.block_size=100000", "train.batch_size=12"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "model.block_size=100000 with train.batch_size=12 needs 1200012 tokens in every split" in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("run.json"))


def _train_lines(run_dir: Path) -> int:
    try:
        text = (run_dir / METRICS_FILE).read_text()
    except OSError:
        return 0
    return sum('"kind": "train"' in line for line in text.splitlines())


def test_a_second_run_into_a_live_runs_dir_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    common = [*tiny_overrides, "train.log_interval=1", f"hydra.run.dir={run_dir}"]
    # The first run saves no checkpoint while it lives (no interval, no eval to find a new best), so the others
    # find nothing to resume: only the lock stops them.
    first = subprocess.Popen([str(Path(sys.executable).parent / "nanogpt-run"), *common, "train.max_iters=100000",
                              "train.ckpt_interval=0", "train.eval_interval=100000"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _train_lines(run_dir) == 0:
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.05)
        second = run_cli(common, cwd=tmp_path)
        assert second.returncode == 2
        assert f"{run_dir} is in use: another nanogpt-run (pid {first.pid}) is training into it" in second.stderr
        assert read_run(run_dir)["status"] == "running" and first.poll() is None  # the first is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = run_cli(common, cwd=tmp_path)  # the kernel dropped the killed run's lock
    assert third.returncode == 0, third.stderr[-2000:]
    assert read_run(run_dir)["status"] == "completed"


def _fail_training_on_a_full_disk(monkeypatch, in_place_fails: bool) -> None:
    """The first forward pass raises; from then on no file can be made durable (fsync: ENOSPC), and with
    ``in_place_fails`` run.json cannot even be rewritten in place."""
    full = []

    def forward(self, idx, targets=None):
        full.append(True)
        raise RuntimeError("boom")

    real_fsync = os.fsync

    def fsync(fd):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    def overwrite_json(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(os, "fsync", fsync)
    if in_place_fails:
        monkeypatch.setattr("nanogpt_runner.train.worker.overwrite_json", overwrite_json)


@pytest.mark.parametrize("in_place_fails", [False, True], ids=["in-place-fits", "nothing-fits"])
def test_a_full_disk_while_recording_a_failure_is_one_line(tmp_path, tiny_overrides, monkeypatch, capsys,
                                                           in_place_fails):
    cfg = compose_config(tiny_overrides)
    data = prepare(cfg.data, announce=lambda _m: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _fail_training_on_a_full_disk(monkeypatch, in_place_fails)
    assert execute(cfg, run_dir, data) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [report] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "training failed: RuntimeError: boom" in report
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(fsutil.TMP_PREFIX)]
    record = json.loads((run_dir / "run.json").read_text())
    if in_place_fails:
        assert record["status"] == "running"  # nothing could be written, and the line says so
        assert "run.json could not be updated (No space left on device)" in report
    else:
        assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
