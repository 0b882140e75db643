"""A sweep through the real CLI in which every job is a torchrun process group and one job fails on one
rank mid-training: the other job still completes, the failing rank's traceback reaches run.json and the
summary table, and the sweep exits non-zero."""

from __future__ import annotations

import textwrap

from conftest import run_cli

from nanogpt_runner.runs import find_runs, read_run
from nanogpt_runner.sweep import error_line, summary_table

# Loaded by every Python process of the test through PYTHONPATH: on rank 1 of the job whose seed is 13,
# the third gradient-norm computation raises, while rank 0 is in (or entering) a collective.
INJECT = textwrap.dedent("""
    import os

    if os.environ.get("RANK") == "1":
        from nanogpt_runner import parallel

        original, calls = parallel.Parallelized.clip_grad_norm, []

        def clip_grad_norm(self, max_norm):
            if os.environ.get("INJECT_SEED") == str(self._seed):
                calls.append(1)
                if len(calls) == 3:
                    raise RuntimeError("injected failure on rank 1")
            return original(self, max_norm)

        original_init = parallel.Parallelized.__init__

        def init(self, model, layout, cfg):
            original_init(self, model, layout, cfg)
            self._seed = cfg.train.seed

        parallel.Parallelized.__init__ = init
        parallel.Parallelized.clip_grad_norm = clip_grad_norm
""")


def test_a_sweep_of_process_groups_isolates_a_failing_rank(tmp_path, tiny_overrides, monkeypatch):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "inject"))
    monkeypatch.setenv("INJECT_SEED", "13")
    result = run_cli(["-m", *tiny_overrides, "train.max_iters=6", "train.eval_interval=6", "train.log_interval=2",
                      "parallel=ddp", "train.seed=1,13"], cwd=tmp_path)
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
        {"sweep": {"job": 0}, "overrides": ["model=tiny", "optimizer.lr=1e-3"], "status": "completed",
         "summary": {"best_val_loss": 2.5, "tok_per_s": 1234.0}, "start_time": 0.0, "end_time": 3.0},
        {"sweep": {"job": 1}, "overrides": ["model=tiny", "optimizer.lr=3e-4"], "status": "failed",
         "error": "invalid config:\n  - optimizer.lr=... must be positive\n  - another problem"},
    ]
    console = Console(width=200, record=True)
    console.print(summary_table(jobs, tmp_path))
    text = console.export_text()
    assert "every job: model=tiny" in text and "optimizer.lr=1e-3" in text and "2.5000" in text and "1,234" in text
    assert "- optimizer.lr=... must be positive" in text and "3.0 s" in text


def test_resume_is_refused_in_a_sweep(tmp_path, tiny_overrides):
    """Every job of ``-m resume=RUN train.seed=1,2`` would continue the same run: each is refused instead."""
    result = run_cli(["-m", *tiny_overrides, f"resume={tmp_path}", "train.seed=1,2"], cwd=tmp_path)
    assert result.returncode != 0
    assert "in a sweep would make every job continue that same run" in result.stderr
    jobs = list(find_runs(tmp_path / "outputs"))
    assert len(jobs) == 2 and all(read_run(job)["status"] == "failed" for job in jobs)
    assert "Traceback" not in result.stderr
