"""Elastic restart and a change of layout, both through sharded (DCP) checkpoints, against one
uninterrupted single-process run: a DDP group whose rank 1 dies at step 5 is restarted by torchrun
(``parallel.max_restarts=1``) and resumes from its step-4 checkpoint; the finished run is then continued
under FSDP for two more steps. Every logged loss equals the single-process run's."""

from __future__ import annotations

import math

from conftest import compose_config, fail_rank_1, run_cli

from nanogpt_runner.checkpoint.folder import read_meta, resolve
from nanogpt_runner.config.validate import validate
from nanogpt_runner.runs.rundir import RunReader, find_runs


def _losses(run_dir) -> dict[int, float]:
    reader = RunReader(run_dir)
    reader.refresh()
    return {r["step"]: r["loss"] for r in reader.metrics.train}


def test_a_restarted_group_resumes_and_a_run_continues_under_another_layout(tmp_path, tiny_overrides, monkeypatch):
    common = [*tiny_overrides, "train.log_interval=1", "train.eval_interval=100", "train.ckpt_interval=2",
              "optimizer.warmup_iters=2", "optimizer.decay_iters=10", "train.batch_size=2"]
    reference = run_cli([*common, "train.max_iters=10", "train.grad_accum=2", "run.name=single"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    [single_dir] = [d for d in find_runs(tmp_path / "outputs") if d.name.endswith("_single")]
    expected = _losses(single_dir)

    fail_rank_1(tmp_path, monkeypatch, at_call=5, when=("TORCHELASTIC_RESTART_COUNT", "0"),
                message="injected failure on rank 1, first attempt")
    elastic = run_cli([*common, "train.max_iters=8", "parallel=ddp", "parallel.max_restarts=1", "run.name=elastic"],
                      cwd=tmp_path)
    assert elastic.returncode == 0, elastic.stderr[-3000:]
    [run_dir] = [d for d in find_runs(tmp_path / "outputs") if d.name.endswith("_elastic")]
    reader = RunReader(run_dir)
    reader.refresh()
    assert reader.info["status"] == "completed"
    assert [e["step"] for e in reader.metrics.events if e.get("event") == "resume"] == [4]
    assert "injected failure on rank 1" in (run_dir / "rank1.log").read_text()
    assert sorted(_losses(run_dir)) == list(range(1, 9))

    monkeypatch.delenv("PYTHONPATH")
    more = run_cli([*common, f"resume={run_dir}", "train.max_iters=10", "parallel=fsdp"], cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, 11))
    for step, loss in expected.items():
        assert math.isclose(losses[step], loss, rel_tol=1e-4), (step, losses[step], loss)


def test_an_fsdp_run_with_background_checkpoints_resumes_like_a_synchronous_one(tmp_path, tiny_overrides):
    """train.async_checkpoint: each save's state is copied and written by DCP in a background thread while the run
    trains on; the step-4 checkpoint, written while steps 5 and 6 changed the weights, resumes to the losses of a
    run that saved synchronously, and every checkpoint the run points at was published whole."""
    common = [*tiny_overrides, "parallel=fsdp", "train.batch_size=2", "train.log_interval=1", "train.max_iters=6",
              "train.eval_interval=100", "train.ckpt_interval=2", "optimizer.warmup_iters=2",
              "optimizer.decay_iters=10"]
    sync = run_cli([*common, "run.name=sync"], cwd=tmp_path)
    assert sync.returncode == 0, sync.stderr[-3000:]
    background = run_cli([*common, "train.async_checkpoint=true", "run.name=async"], cwd=tmp_path)
    assert background.returncode == 0, background.stderr[-3000:]
    runs = {d.name.rsplit("_", 1)[-1]: d for d in find_runs(tmp_path / "outputs")}
    expected = _losses(runs["sync"])
    assert _losses(runs["async"]) == expected  # saving in the background does not change the training

    reader = RunReader(runs["async"])
    reader.refresh()
    saves = [e for e in reader.metrics.events if e.get("event") == "checkpoint"]
    assert [e["step"] for e in saves] == [2, 4, 6] and all("blocked_s" in e for e in saves[:2])
    checkpoints = runs["async"] / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == resolve(runs["async"], "latest", print)[0].name
    assert not list(checkpoints.glob(".tmp-*"))
    [step_4] = [p for p in checkpoints.iterdir() if p.name.startswith("step_") and p.name.endswith("4")]
    assert read_meta(step_4)["step"] == 4

    resumed = run_cli([*common, "train.async_checkpoint=true", f"resume={step_4}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reader = RunReader(runs["async"])
    reader.refresh()
    assert [e["step"] for e in reader.metrics.events if e.get("event") == "resume"] == [4]  # continued here
    losses = _losses(runs["async"])
    assert sorted(losses) == list(range(1, 7))
    for step, loss in expected.items():
        assert math.isclose(losses[step], loss, rel_tol=1e-4), (step, losses[step], loss)


def test_background_checkpoints_are_refused_for_one_process(tiny_overrides):
    problems = validate(compose_config([*tiny_overrides, "train.async_checkpoint=true"]))
    assert any("train.async_checkpoint=true needs a run of several processes" in p for p in problems), problems
    assert validate(compose_config([*tiny_overrides, "train.async_checkpoint=true", "parallel=fsdp"])) == []
