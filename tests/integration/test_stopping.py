"""Stops that save compute: token, FLOPs and time budgets, a target loss, patience and divergence. Each
ends the run as completed, with its stop_reason in run.json, an early_stop event line and a checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from conftest import compose_config, run_cli

from nanogpt_runner.checkpoint.folder import checkpoint_dir, find_latest
from nanogpt_runner.config.schema import planned_steps
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.runs.rundir import RunReader, read_run
from nanogpt_runner.train.stopping import Stopper
from nanogpt_runner.train.worker import execute


def limits(**changes) -> SimpleNamespace:
    """train.* as the Stopper reads it: 100 steps, every stop off unless changed."""
    fields = dict(max_iters=100, max_tokens=None, max_flops=None, max_time_s=None, target_loss=None,
                  early_stop_patience=None, divergence_factor=None)
    return SimpleNamespace(**{**fields, **changes})


def test_token_and_flops_budgets_become_steps_before_the_first_one():
    assert planned_steps(limits(), tokens_per_step=128, flops_per_token=1e3) == (100, "max_iters")
    assert planned_steps(limits(max_tokens=128 * 30 + 5), 128, 1e3) == (30, "max_tokens")
    assert planned_steps(limits(max_flops=128 * 1e3 * 12), 128, 1e3) == (12, "max_flops")
    both = limits(max_tokens=128 * 30, max_flops=128 * 1e3 * 40)
    assert planned_steps(both, 128, 1e3) == (30, "max_tokens")  # the tighter budget sets the steps
    assert planned_steps(limits(max_tokens=10), 128, 1e3) == (1, "max_tokens")  # never less than one step


def test_a_time_budget_moves_the_schedule_by_the_fraction_of_time_spent():
    stopper = Stopper(limits(max_time_s=10.0), 128, 1e3)
    assert stopper.schedule_step(5) == 5
    stopper.after_log(4.0)  # 40% of the time after 5 of 100 steps: the schedule is 40% through
    assert stopper.schedule_step(5) == 40 and not stopper.stopping
    stopper.after_log(10.0)
    assert stopper.stopping and stopper.stop_reason == "max_time_s"


def test_the_time_decision_uses_the_agreed_clock():
    stopper = Stopper(limits(max_time_s=10.0), 128, 1e3, agree=lambda _mine: 11.0)  # rank 0's clock says 11 s
    stopper.after_log(1.0)
    assert stopper.stop_reason == "max_time_s"


@pytest.mark.parametrize(("changes", "val_losses", "reason", "at_eval"), [
    ({"target_loss": 2.0}, [3.0, 2.5, 1.99, 1.5], "target_loss", 3),
    ({"early_stop_patience": 2}, [3.0, 2.5, 2.6, 2.5, 2.4], "early_stop_patience", 4),
    ({"divergence_factor": 1.5}, [3.0, 2.0, 2.9, 3.1], "divergence_factor", 4),
    ({"divergence_factor": 1.5}, [3.0, 2.0, math.nan], "divergence_factor", 3),
    ({}, [3.0, 2.0, 9.0, 9.0], "max_iters", None),
])
def test_early_stops_decide_at_evaluations(changes, val_losses, reason, at_eval):
    stopper = Stopper(limits(**changes), 128, 1e3)
    stopped_at = None
    for i, loss in enumerate(val_losses, start=1):
        stopper.after_eval(loss)
        if stopper.stopping and stopped_at is None:
            stopped_at = i
    assert stopper.stop_reason == reason and stopped_at == at_eval
    assert reason in stopper.describe() or stopper.describe().startswith(("val loss", "2 evals"))


def run(tiny_overrides, run_dir, *extra) -> tuple[dict, RunReader]:
    """Train in this process through the worker (which sets run.json's status), as nanogpt-run does."""
    cfg = compose_config(tiny_overrides + ["train.max_iters=60", "train.eval_interval=5", *extra])
    assert execute(cfg, run_dir, prepare(cfg.data)) == 0
    reader = RunReader(run_dir)
    reader.refresh()
    return reader.info, reader


def test_a_token_budget_ends_the_run_completed_with_its_reason_event_and_checkpoint(tmp_path, tiny_overrides):
    info, reader = run(tiny_overrides, tmp_path, f"train.max_tokens={12 * 4 * 32}")  # 12 steps of 4 x 32 tokens
    assert info["status"] == "completed"
    assert info["summary"]["stop_reason"] == "max_tokens" and info["summary"]["steps"] == 12
    assert info["summary"]["tokens"] == 12 * 4 * 32
    event = next(e for e in reader.metrics.events if e["event"] == "early_stop")
    assert event["step"] == 12 and event["stop_reason"] == "max_tokens"
    # The cosine schedule spans the 12 steps the budget allows (over 60 it would still be near its peak, 1e-3).
    assert reader.metrics.train[-1]["lr"] < 1.5e-4
    assert find_latest(checkpoint_dir(tmp_path), lambda _: None)[1]["step"] == 12


def test_a_target_loss_stops_at_the_first_eval_that_reaches_it(tmp_path, tiny_overrides):
    info, reader = run(tiny_overrides, tmp_path, "train.target_loss=3.9")
    stop_step = info["summary"]["steps"]
    assert info["status"] == "completed" and info["summary"]["stop_reason"] == "target_loss" and stop_step < 60
    evals = reader.metrics.eval
    assert evals[-1]["step"] == stop_step and evals[-1]["val_loss"] <= 3.9
    assert all(e["val_loss"] > 3.9 for e in evals[:-1])
    assert find_latest(checkpoint_dir(tmp_path), lambda _: None)[1]["step"] == stop_step


def test_a_spent_time_budget_stops_at_the_next_metrics_line_after_a_last_eval(tmp_path, tiny_overrides):
    info, reader = run(tiny_overrides, tmp_path, "train.max_time_s=0.001")
    assert info["status"] == "completed" and info["summary"]["stop_reason"] == "max_time_s"
    assert info["summary"]["steps"] == 5  # the first metrics line (train.log_interval=5)
    assert reader.metrics.eval[-1]["step"] == 5  # evaluated where it stopped, so the best val loss is known


def test_every_rank_of_a_process_group_stops_at_the_same_step(tmp_path, tiny_overrides):
    """Rank 0's clock decides the time budget for all: a rank that stopped alone would hang the others."""
    args = [*tiny_overrides, "parallel=ddp", "train.max_time_s=0.001", f"hydra.run.dir={tmp_path / 'r'}"]
    result = run_cli(args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    info = read_run(tmp_path / "r")
    assert info["status"] == "completed" and info["world_size"] == 2
    assert info["summary"]["stop_reason"] == "max_time_s" and info["summary"]["steps"] == 5


def test_stop_settings_are_checked_before_a_run_starts():
    from nanogpt_runner.config.validate import validate

    cfg = compose_config(["train.early_stop_patience=0", "train.divergence_factor=0.5", "train.max_tokens=-1",
                          "sweep.objective=time_to_target"])
    problems = "\n".join(validate(cfg))
    assert "train.early_stop_patience=0 must be 1 or more" in problems
    assert "train.divergence_factor=0.5 must be above 1" in problems
    assert "train.max_tokens=-1 must be positive" in problems
    assert "sweep.objective=time_to_target needs train.target_loss" in problems
