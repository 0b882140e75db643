"""Resume and failure handling through the real CLI and training loop: kill -9 and resume trains the
same parameters bit for bit, SIGTERM saves and marks the run interrupted, resume=PATH continues in place
(recording allowed changes, refusing architecture changes), and NaN either stops or skips."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, run_cli

from nanogpt_runner import errors
from nanogpt_runner.checkpoint import folder as folders
from nanogpt_runner.checkpoint import resume_plan
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.distributed import process_group
from nanogpt_runner.launch.app import CONF_DIR
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.runs.rundir import METRICS_FILE, RunReader, read_run
from nanogpt_runner.train import signals as run_control
from nanogpt_runner.train.worker import execute

MAX_ITERS = 80


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_path) -> list[str]:
    """A tiny fp32 CPU run with dropout on (so the RNG matters), a checkpoint every 10 steps and a
    metrics line every step (so a test can tell where the run is)."""
    cache = tmp_path_factory.mktemp("cache")
    return [
        "model=tiny", "model.dropout=0.1", f"train.max_iters={MAX_ITERS}", "train.eval_interval=40",
        "train.eval_iters=2", "train.log_interval=1", "train.batch_size=4", "train.precision=fp32",
        "train.ckpt_interval=10", "optimizer.warmup_iters=5", "run.progress=false", f"data.path={corpus_path}",
        f"data.cache_dir={cache}",
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module on one thread: the same thread count in every process keeps the float
    reductions in the same order, and tiny models do not suffer when the test machine is busy."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base, one_thread) -> Path:
    """The uninterrupted run every interrupted one must match."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli([*base, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "nanogpt-run"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> int:
    """Block until the run has logged ``step`` (returns the step it is at) or has exited (fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"
        try:
            lines = (run_dir / METRICS_FILE).read_text().splitlines()
        except OSError:
            lines = []
        steps = [json.loads(line)["step"] for line in lines if line.endswith("}") and '"train"' in line]
        if steps and steps[-1] >= step:
            return steps[-1]
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {timeout} s")


def final_state(run_dir: Path) -> tuple[dict, dict]:
    path = folders.checkpoint_dir(run_dir) / folders.checkpoint_name(MAX_ITERS)
    return tuple(torch.load(path / name, weights_only=True) for name in (folders.MODEL_FILE, folders.OPTIMIZER_FILE))


def assert_bitwise_equal(run_dir: Path, reference: Path) -> None:
    (model, optim), (ref_model, ref_optim) = final_state(run_dir), final_state(reference)
    assert model.keys() == ref_model.keys()
    for key in model:
        assert torch.equal(model[key], ref_model[key]), f"parameter {key} differs from the uninterrupted run"
    for name, state in optim["state"].items():
        for key, value in state.items():
            assert torch.equal(value, ref_optim["state"][name][key]), f"optimizer {name}.{key} differs"


def clean_curve(run_dir: Path) -> list[int]:
    reader = RunReader(run_dir)
    reader.refresh()
    return [r["step"] for r in reader.metrics.train]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, base, reference):
    run_dir = tmp_path / "run"
    proc = start([*base, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_step(proc, run_dir, 25)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert read_run(run_dir)["status"] == "running"  # what a killed process leaves behind
    killed_at = max(r["step"] for r in RunReader(run_dir).tail.poll()[0] if r["kind"] == "train")

    result = run_cli([*base, f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # train.resume=auto is the default
    assert result.returncode == 0, result.stderr
    assert_bitwise_equal(run_dir, reference)
    resume = [e for e in RunReader(run_dir).tail.poll()[0] if e.get("event") == "resume"]
    assert len(resume) == 1 and 20 <= resume[0]["step"] <= killed_at and resume[0]["step"] % 10 == 0
    assert clean_curve(run_dir) == list(range(1, MAX_ITERS + 1))  # the killed attempt's extra lines superseded
    assert read_run(run_dir)["status"] == "completed"


def test_sigterm_saves_then_resume_path_continues_in_place(tmp_path, base, reference):
    run_dir = tmp_path / "run"
    proc = start([*base, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_step(proc, run_dir, 15)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    record = read_run(run_dir)
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    events = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    last_step = max(e["step"] for e in events if e["kind"] == "train")
    saved = [e for e in events if e.get("event") == "checkpoint"][-1]
    assert (saved["reason"], saved["step"]) == ("signal", last_step)  # the last completed step is on disk
    assert folders.find_latest(folders.checkpoint_dir(run_dir))[1]["step"] == last_step

    # resume=PATH from another directory; an eval-cadence change is allowed and recorded.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # (where prepared data is cached is this command line's, never the checkpoint's)
    result = run_cli([f"resume={run_dir}", "train.eval_interval=25", f"data.cache_dir={tmp_path / 'cache'}"],
                     cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert not [p for p in elsewhere.rglob("*") if p.is_file()]  # continued in place: no new run directory
    assert_bitwise_equal(run_dir, reference)
    resume = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()
              if '"resume"' in line]
    assert [(r["step"], r["changes"]) for r in resume] == [(last_step, {"train.eval_interval": [40, 25]})]
    record = read_run(run_dir)
    assert record["status"] == "completed" and record["resumes"][0]["step"] == last_step
    assert record["config"]["train"]["eval_interval"] == 25
    assert clean_curve(run_dir) == list(range(1, MAX_ITERS + 1))


def test_sighup_saves_and_prints_the_command_that_continues_the_run(tmp_path, base):
    """Closing the terminal or SSH session that started a run (SIGHUP) stops it as SIGTERM does: the last
    step checkpointed, status interrupted, and the exact command that continues it."""
    run_dir = tmp_path / "run"
    proc = start([*base, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_step(proc, run_dir, 5)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP and "Traceback" not in stderr
    record = read_run(run_dir)
    assert record["status"] == "interrupted" and "stopped by SIGHUP" in record["error"]
    assert f"continue with: nanogpt-run resume={run_dir}" in stderr
    assert folders.find_latest(folders.checkpoint_dir(run_dir)) is not None


# Trains through the worker as a torchrun rank or sweep job does, with a SIGTERM as the run leaves its process
# group: after the loop, before run.json records how the run ended (SLURM's second signal, or the launcher
# watch's when the launcher ended first). "interrupted": the loop itself stops at its first poll, as for a signal.
LATE_STOP = """
import os, signal, sys
from pathlib import Path
from nanogpt_runner.distributed import process_group
from nanogpt_runner.train import signals as run_control
from nanogpt_runner.launch.app import compose_overrides
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.train.worker import execute

leave = process_group.shutdown
def leave_after_a_late_stop(completed):
    os.kill(os.getpid(), signal.SIGTERM)
    leave(completed)
process_group.shutdown = leave_after_a_late_stop
if sys.argv[2] == "interrupted":
    run_control.StopSignals.requested = lambda self: True
cfg, _ = compose_overrides(sys.argv[3:])
sys.exit(execute(cfg, Path(sys.argv[1]), prepare(cfg.data)))
"""


@pytest.mark.parametrize("ending, code", [("completed", 0), ("interrupted", 128 + signal.SIGTERM)])
def test_a_stop_signal_after_the_loop_does_not_lose_how_the_run_ended(ending, code, tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", LATE_STOP, str(run_dir), ending, *tiny_overrides], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert read_run(run_dir)["status"] == ending


def test_a_conflicting_override_is_refused_and_the_run_left_alone(tmp_path, reference):
    before = (reference / "run.json").read_bytes()
    result = run_cli([f"resume={reference}", f"train.max_iters={MAX_ITERS + 10}", "model.n_embd=64"], cwd=tmp_path)
    assert result.returncode == 2
    assert "model.n_embd=64 conflicts with the checkpoint's model.n_embd=32" in result.stderr
    assert "Traceback" not in result.stderr
    assert (reference / "run.json").read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def plan(base: list[str], run_dir: Path, *overrides: str):
    cfg = compose_config([*base, *overrides])
    return resume_plan.plan_resume(cfg, run_dir, list(overrides), CONF_DIR, announce=pytest.fail)


def test_plan_takes_architecture_from_the_checkpoint(tmp_path, reference):
    # Nothing on the command line but resume and max_iters: the model is the checkpoint's (tiny), not the
    # default group's (baby), and the one change is recorded.
    resumed = plan([], tmp_path, f"resume={reference}", "train.max_iters=300")
    assert (resumed.run_dir, resumed.step) == (reference.resolve(), MAX_ITERS)
    assert (resumed.cfg.model.n_embd, resumed.cfg.model.dropout, resumed.cfg.train.max_iters) == (32, 0.1, 300)
    assert resumed.changes == {"train.max_iters": [MAX_ITERS, 300]}
    assert resumed.cfg.resume == str(folders.checkpoint_dir(reference).resolve() / folders.checkpoint_name(MAX_ITERS))

    with pytest.raises(errors.CheckpointError, match="model.n_embd=128 conflicts"):
        plan([], tmp_path, f"resume={reference}", "train.max_iters=300", "model=baby")
    with pytest.raises(errors.CheckpointError, match="global batch would change from 4 sequences"):
        plan([], tmp_path, f"resume={reference}", "train.max_iters=300", "train.batch_size=8")
    # The same global batch split differently (2 x accumulation 2 instead of 4) is the same run.
    split = plan([], tmp_path, f"resume={reference}", "train.max_iters=300", "train.batch_size=2",
                 "train.grad_accum=2")
    assert split.changes["train.batch_size"] == [4, 2] and split.changes["train.grad_accum"] == [1, 2]
    with pytest.raises(errors.CheckpointError, match="nothing to train"):
        plan([], tmp_path, f"resume={reference}")


def test_auto_resume_only_where_checkpoints_are(tmp_path, base, reference):
    assert plan(base, tmp_path) is None  # a fresh directory: a fresh run
    resumed = plan(base, reference, "train.max_iters=200")
    assert resumed.run_dir == reference.resolve()
    with pytest.raises(errors.CheckpointError, match="train.resume=never"):
        plan(base, reference, "train.max_iters=200", "train.resume=never")


def inject_nan(monkeypatch, at_call: int) -> None:
    """The training forward pass number ``at_call`` returns a NaN loss (evaluation passes do not count)."""
    real_forward, calls = GPT.forward, []

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if self.training and targets is not None:
            calls.append(1)
            if len(calls) == at_call:
                loss = loss * math.nan
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def train_in_process(tmp_path, overrides: list[str]) -> tuple[int, Path]:
    cfg = compose_config(overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return execute(cfg, run_dir, prepare(cfg.data, announce=print)), run_dir


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    inject_nan(monkeypatch, at_call=15)
    code, run_dir = train_in_process(tmp_path, [*tiny_overrides, "train.ckpt_interval=5"])
    assert code == 1
    record = read_run(run_dir)
    assert record["status"] == "failed" and "non-finite loss at step 15" in record["error"]
    events = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    nan = [e for e in events if e.get("event") == "nan"]
    assert [(e["step"], e["loss"], e["action"]) for e in nan] == [(15, "nan", "stopped")]
    kept = folders.list_checkpoints(folders.checkpoint_dir(run_dir))
    assert [p.name for p in kept] == ["step_0000005", "step_0000010"]
    path, meta = folders.find_latest(folders.checkpoint_dir(run_dir))
    weights = torch.load(path / folders.MODEL_FILE, weights_only=True)
    assert meta["step"] == 10 and all(torch.isfinite(w).all() for w in weights.values())


def test_nan_skip_step_drops_the_update_and_counts_it(tmp_path, tiny_overrides, monkeypatch):
    inject_nan(monkeypatch, at_call=12)
    code, run_dir = train_in_process(tmp_path, [*tiny_overrides, "train.nan_policy=skip_step"])
    assert code == 0
    record = read_run(run_dir)
    assert record["status"] == "completed" and record["summary"]["skipped_steps"] == 1
    events = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [(e["step"], e["action"]) for e in events if e.get("event") == "nan"] == [(12, "skipped")]
    train_lines = [e for e in events if e["kind"] == "train"]
    assert all(isinstance(e["loss"], float) and math.isfinite(e["loss"]) for e in train_lines)
    assert [e["skipped_steps"] for e in train_lines if e["step"] in (10, 15)] == [0, 1]
    assert folders.find_latest(folders.checkpoint_dir(run_dir))[1]["skipped_steps"] == 1


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_sigint_twice_stops_at_once(tmp_path):
    with run_control.StopSignals() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested()
        os.kill(os.getpid(), signal.SIGINT)


def test_a_restarted_group_continues_from_the_runs_latest_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    """A run continued with resume=RUN runs with a config whose ``resume`` names the checkpoint it was
    continued from. When torchrun restarts the group (parallel.max_restarts) with that same config, the
    new attempt continues from the run's latest checkpoint, and the newer checkpoints are kept."""
    overrides = [*tiny_overrides, "train.ckpt_interval=5", "train.keep_last=10"]
    code, run_dir = train_in_process(tmp_path, overrides)  # 20 steps: checkpoints 5, 10, 15, 20
    assert code == 0
    ckpt_dir = folders.checkpoint_dir(run_dir)
    first_resumed_from = ckpt_dir / folders.checkpoint_name(10)
    cfg = compose_config([*overrides, "train.max_iters=25", f"resume={first_resumed_from}"])
    monkeypatch.setenv(process_group.RESTART_COUNT_ENV, "1")  # what torchrun sets in a restarted group
    assert execute(cfg, run_dir, prepare(cfg.data, announce=print)) == 0
    events = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resume"] == [20]
    kept = folders.list_checkpoints(ckpt_dir)
    assert [p.name for p in kept] == [folders.checkpoint_name(s) for s in (5, 10, 15, 20, 25)]
