"""Sweeps through the real CLI: a job that fails (on one rank of a torchrun group) does not stop the others
and the sweep exits non-zero; each job returns its objective to the sweeper; an Optuna search writes its
best trial; re-running a sweep skips what completed and resumes what was interrupted."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fail_rank_1, run_cli

from nanogpt_runner.analysis.records import RunRecord
from nanogpt_runner.launch.sweep import error_line, job_objective, summary_table
from nanogpt_runner.runs.rundir import METRICS_FILE, RunReader, find_runs, read_run
from nanogpt_runner.viewer.synthetic import config, write_run


def test_a_sweep_of_process_groups_isolates_a_failing_rank(tmp_path, tiny_overrides, monkeypatch):
    # Rank 1 of the second job (seed 13) fails. Each job sets INJECT_JOB itself (hydra.job.env_set), so the
    # failing job's ranks must see their own job's environment, not that of the rank server the first job
    # started (nanogpt_runner.launch.torchrun: they are spawned).
    fail_rank_1(tmp_path, monkeypatch, at_call=3, when=("INJECT_JOB", "job1"), message="injected failure on rank 1")
    result = run_cli(["-m", *tiny_overrides, "train.max_iters=6", "train.eval_interval=6", "train.log_interval=2",
                      "parallel=ddp", "train.seed=1,13", "+hydra.job.env_set.INJECT_JOB=job${hydra.job.num}"],
                     cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]

    runs = {read_run(d)["sweep"]["job"]: read_run(d) for d in find_runs(tmp_path / "outputs")}
    assert sorted(runs) == [0, 1]
    ok, failed = runs[0], runs[1]
    assert ok["status"] == "completed" and ok["world_size"] == 2 and "train.seed=1" in ok["overrides"]
    assert failed["status"] == "failed" and "train.seed=13" in failed["overrides"]
    assert "rank 1: Traceback" in failed["error"] and "RuntimeError: injected failure on rank 1" in failed["error"]
    assert error_line(failed) == "rank 1: RuntimeError: injected failure on rank 1"

    # The table: both jobs, what differs between them, the failure's line; and the exit message.
    table = result.stdout[result.stdout.rfind("sweep "):]
    assert "train.seed=1 " in table and "train.seed=13" in table and "completed" in table and "failed" in table
    assert "rank 1: RuntimeError: injected failure on rank 1" in table
    assert "1 of 2 sweep jobs did not complete" in result.stderr


def test_the_summary_table_shows_what_differs_between_jobs(tmp_path):
    from rich.console import Console

    jobs = [
        RunRecord("0", tmp_path / "0", {
            "sweep": {"job": 0}, "overrides": ["model=tiny", "optimizer.lr=1e-3"], "status": "completed",
            "summary": {"best_val_loss": 2.5, "tok_per_s": 1234.0, "stop_reason": "target_loss"},
            "start_time": 0.0, "end_time": 3.0}),
        RunRecord("1", tmp_path / "1", {
            "sweep": {"job": 1, "action": "re-run"}, "overrides": ["model=tiny", "optimizer.lr=3e-4"],
            "status": "failed",
            "error": "invalid config:\n  - optimizer.lr=... must be positive\n  - another problem"}),
    ]
    console = Console(width=200, record=True)
    console.print(summary_table(jobs, tmp_path))
    text = console.export_text()
    assert "every job: model=tiny" in text and "optimizer.lr=1e-3" in text and "1,234" in text
    assert "★ 2.5000" in text and "target_loss" in text and "objective (val_loss)" in text
    assert "failed (re-run)" in text
    assert "- optimizer.lr=... must be positive" in text and "3.0 s" in text


def test_resume_is_refused_in_a_sweep(tmp_path, tiny_overrides):
    """Every job of ``-m resume=RUN train.seed=1,2`` would continue the same run: each is refused instead."""
    result = run_cli(["-m", *tiny_overrides, f"resume={tmp_path}", "train.seed=1,2"], cwd=tmp_path)
    assert result.returncode != 0
    assert "in a sweep would make every job continue that same run" in result.stderr
    jobs = list(find_runs(tmp_path / "outputs"))
    assert len(jobs) == 2 and all(read_run(job)["status"] == "failed" for job in jobs)
    assert "Traceback" not in result.stderr


def test_a_job_returns_its_objective_and_nan_when_it_did_not_complete(tmp_path):
    write_run(tmp_path / "ok", 50).close()
    write_run(tmp_path / "fast", 50, cfg=config(**{"sweep.objective": "tok_per_s"}), tok_per_s=5000.0).close()
    write_run(tmp_path / "slow", 50, cfg=config(**{"sweep.objective": "time_to_target", "train.target_loss": 0.1}))\
        .close()
    write_run(tmp_path / "failed", 20, status="failed").close()
    reader = RunReader(tmp_path / "ok")
    reader.refresh()
    assert job_objective(tmp_path / "ok") == min(line["val_loss"] for line in reader.metrics.eval)
    assert job_objective(tmp_path / "fast") == 5000.0
    assert job_objective(tmp_path / "slow") == math.inf  # completed, never reached the target: the worst value
    assert math.isnan(job_objective(tmp_path / "failed"))  # Optuna records a failed trial


def test_a_four_trial_optuna_search_writes_the_best_trial_and_resumes(tmp_path, tiny_overrides):
    args = ["-m", *tiny_overrides, "train.max_iters=6", "train.eval_interval=3", "train.log_interval=3",
            "hparams_search=lr_warmup_wd", "hydra.sweeper.n_trials=4",
            "optimizer.warmup_iters=choice(0,2)",  # a sweep on the command line replaces the preset's range
            f"hydra.sweep.dir={tmp_path / 'search'}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import yaml

    found = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    jobs = {read_run(d)["sweep"]["job"]: read_run(d) for d in find_runs(tmp_path / "search")}
    assert sorted(jobs) == [0, 1, 2, 3] and all(job["status"] == "completed" for job in jobs.values())
    values = {n: job["summary"]["best_val_loss"] for n, job in jobs.items()}
    assert found["name"] == "optuna" and found["best_value"] == float(f"{min(values.values()):.4g}")
    assert set(found["best_params"]) == {"optimizer.lr", "optimizer.warmup_iters", "optimizer.weight_decay"}
    best = min(values, key=values.get)
    assert f"optimizer.lr={found['best_params']['optimizer.lr']}" in jobs[best]["overrides"]
    assert "★" in result.stdout and f"best: job {best} " in result.stdout

    lr = float(found["best_params"]["optimizer.lr"])
    assert lr == float(f"{lr:.4g}")  # proposals run, and are shown, at 4 significant digits

    # The same command again continues the study kept in the sweep folder: it holds its four trials already.
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "4 of hydra.sweeper.n_trials=4 trials so far; nothing left to run" in again.stdout
    assert (tmp_path / "search" / "optuna.db").exists()


def test_a_sweep_run_again_skips_completed_jobs_and_resumes_the_interrupted_one(tmp_path, tiny_overrides):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *tiny_overrides, "train.max_iters=40", "train.ckpt_interval=5", "train.eval_interval=20",
            f"hydra.sweep.dir={sweep_dir}", "train.seed=1,2"]
    first = subprocess.Popen([str(Path(sys.executable).parent / "nanogpt-run"), *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill the sweep once job 0 completed and job 1 saved its first checkpoint
        deadline = time.monotonic() + 300
        while not ((read_run(sweep_dir / "0") or {}).get("status") == "completed"
                   and '"checkpoint"' in _text(sweep_dir / "1" / METRICS_FILE)):
            assert time.monotonic() < deadline and first.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)
        while (read_run(sweep_dir / "1") or {}).get("status") == "running":  # the job saves, then records it
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert read_run(sweep_dir / "1")["status"] == "interrupted"
    completed_metrics = (sweep_dir / "0" / METRICS_FILE).read_bytes()

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    job0, job1 = read_run(sweep_dir / "0"), read_run(sweep_dir / "1")
    assert job0["status"] == "completed" and job0["sweep"]["action"] == "skipped"
    assert (sweep_dir / "0" / METRICS_FILE).read_bytes() == completed_metrics  # it did not train again
    assert job1["status"] == "completed" and job1["sweep"]["action"] == "resumed" and job1["summary"]["steps"] == 40
    assert "error" not in job1  # the interruption belongs to the previous attempt
    assert "this launch: 1 skipped (completed before), 1 resumed from a checkpoint" in again.stdout
    assert "completed (skipped)" in again.stdout and "completed (resumed)" in again.stdout

    # Another command in the same sweep dir is refused before anything is touched.
    other = run_cli([*args[:-1], "train.seed=3,4"], cwd=tmp_path)
    assert other.returncode == 2 and "holds job 0 of another sweep" in other.stderr
    assert read_run(sweep_dir / "0") == job0


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_search_without_optuna_or_without_a_space_is_one_message_and_exit_2(monkeypatch, capsys):
    from nanogpt_runner.launch.search import OptunaSearch

    search = OptunaSearch(n_trials=2)
    with pytest.raises(SystemExit) as exit_info:
        search.sweep(["model=tiny"])  # nothing swept
    assert exit_info.value.code == 2 and "the search has nothing to search" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as exit_info:
        search.sweep(["optimizer.lr=interval(1e-4,1e-2)"])
    assert exit_info.value.code == 2 and "pip install -e '.[optuna]'" in capsys.readouterr().err
