"""run.json keeps the compile decision of a run whose train.compile is null, the console says why, and a compiled
run measures its own compile for the next run's decision. In process, on a CPU: the GPU's decision is injected,
and the "compile" is torch.compile replaced by the identity (no timing is asserted)."""

from __future__ import annotations

import json

import torch
from conftest import compose_config

from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.perf import compile_decision
from nanogpt_runner.runs.rundir import RUN_FILE, RunReader, RunWriter
from nanogpt_runner.train.loop import train


def _train(run_dir, overrides):
    cfg = compose_config(overrides)
    writer = RunWriter(run_dir)
    train(cfg, run_dir, prepare(cfg.data), writer)
    writer.close()
    reader = RunReader(run_dir)
    reader.refresh()
    return json.loads((run_dir / RUN_FILE).read_text()), reader.metrics, (run_dir / "train.log").read_text()


def test_a_cpu_run_records_that_it_does_not_compile_by_default(tmp_path, tiny_overrides):
    record, _, log = _train(tmp_path / "run", tiny_overrides)
    assert record["compile_decision"]["compile"] is False
    assert "CPU" in record["compile_decision"]["reason"] and record["compile_decision"]["saves_s"] is None
    assert "compile off" not in log  # no estimate on a CPU: nothing to explain


def test_an_estimated_decision_is_recorded_and_explained(tmp_path, tiny_overrides, monkeypatch):
    def gpu_like(cfg, vocab_size, device, precision, cache_dir, probe, flops_per_token, tokens_per_step, peak):
        return compile_decision.decide(cfg.train.max_iters, 30.0, "prior", 20.0, "precision probe")

    monkeypatch.setattr(compile_decision, "decide_for_run", gpu_like)
    record, _, log = _train(tmp_path / "run", tiny_overrides)
    decision = record["compile_decision"]
    assert decision["compile"] is False and decision["steps"] == 20 and decision["compile_s"] == 30.0
    assert decision["eager_step_from"] == "precision probe" and decision["compiled_step_ms"] == 16.0
    assert "compile off: 20 steps x (20.00 ms eager [precision probe]" in log


def test_a_compiled_run_measures_and_caches_its_compile(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setattr(compile_decision, "decide_for_run",
                        lambda *args: compile_decision.CompileDecision(True, "injected"))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(torch, "compile", lambda function, *args, **kwargs: function)
    record, metrics, log = _train(tmp_path / "run", tiny_overrides)
    assert record["compile_decision"]["compile"] is True
    measured = [e for e in metrics.events if e.get("event") == "compile_measured"]
    assert len(measured) == 1 and measured[0]["step"] == 10 and measured[0]["seconds"] >= 0  # at the second window
    cfg = compose_config(tiny_overrides)
    seconds, source = compile_decision.expected_compile_seconds(cfg, record["dataset"]["vocab_size"],
                                                                torch.device("cpu"), "fp32", tmp_path / "cache")
    assert source == "measured on this machine" and seconds == measured[0]["seconds"]
    assert "remembered for the next run's compile decision" in log
