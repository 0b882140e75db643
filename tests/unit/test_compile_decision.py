"""train.compile null on a GPU is decided from numbers: the expected compile seconds (measured here and cached, or
a prior) against steps x (eager step - compiled step). Every timing here is injected: no GPU, no compile, and no
assertion on how long anything took."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_config

from nanogpt_runner.perf import autotune, compile_decision, hardware, plan
from nanogpt_runner.perf.compile_decision import CompileClock, decide

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")
EAGER_MS, COMPILED_MS, COLD_FIRST_STEP_MS = 20.0, 10.0, 5_000.0


@pytest.fixture(autouse=True)
def _fake_gpu_name(monkeypatch):
    """The cache keys name the device; this CPU-only torch cannot ask a GPU its name."""
    real = hardware.describe
    monkeypatch.setattr(hardware, "describe", lambda device: "NVIDIA H100 (faked)" if device.type == "cuda"
                        else real(device))


def test_a_short_run_does_not_repay_the_compile_and_a_long_one_does():
    short = decide(1_000, 30.0, "prior", EAGER_MS, "timed")  # 1,000 x 4 ms (the prior's fifth) = 4 s < 2 x 30 s
    long = decide(100_000, 30.0, "prior", EAGER_MS, "timed")  # 400 s >= 60 s
    assert not short.compile and long.compile
    assert short.compiled_step_ms == EAGER_MS * compile_decision.COMPILED_STEP_PRIOR
    assert short.compiled_step_from.startswith("prior")
    timed = decide(1_000, 30.0, "prior", EAGER_MS, "timed", compiled_ms=1.0)  # a timed step replaces the prior
    assert timed.saves_s == 19.0 and not timed.compile and timed.compiled_step_from == "timed"
    assert "compile on" in long.describe() and "100,000 steps" in long.describe()
    assert "less than 2 x the 30 s" in short.describe()


def test_a_measured_compile_time_is_cached_per_machine_and_shape(tmp_path):
    cfg = compose_config(["model=tiny", f"data.cache_dir={tmp_path}"])
    seconds, source = compile_decision.expected_compile_seconds(cfg, 65, CPU, "bf16", tmp_path)
    assert source.startswith("prior") and seconds == compile_decision.prior_compile_seconds(cfg.model.n_layer)
    compile_decision.remember_compile_seconds(cfg, 65, CPU, "bf16", tmp_path, 7.25)
    assert compile_decision.expected_compile_seconds(cfg, 65, CPU, "bf16", tmp_path) == (7.25,
                                                                                         "measured on this machine")
    # another precision or model shape has not been measured
    assert compile_decision.expected_compile_seconds(cfg, 65, CPU, "fp32", tmp_path)[1].startswith("prior")
    other = compose_config(["model=shakespeare", f"data.cache_dir={tmp_path}"])
    assert compile_decision.expected_compile_seconds(other, 65, CPU, "bf16", tmp_path)[1].startswith("prior")
    # a cache entry that is not a sane number of seconds is ignored
    key = compile_decision.compile_key(cfg, 65, CPU, "bf16")
    for hostile in ({"seconds": "7"}, {"seconds": -1}, {"seconds": math.nan}, ["seconds", 7], 7):
        autotune.write_cache(tmp_path, key, hostile)
        assert compile_decision.expected_compile_seconds(cfg, 65, CPU, "bf16", tmp_path)[1].startswith("prior")


def test_a_compiled_run_measures_its_compile_from_its_first_two_windows():
    clock = CompileClock()
    assert clock.window(12.0, 10) is None  # the first window: compile + 10 steps
    assert clock.window(1.0, 10) == 12.0 - 10 * 0.1  # steady steps of 0.1 s: the compile took 11 s
    assert clock.window(1.0, 10) is None  # measured once


def test_without_a_plan_a_run_decides_from_the_probe_or_the_flops_prior(tmp_path):
    def run_decision(max_iters, probe):
        cfg = compose_config(["model=tiny", f"train.max_iters={max_iters}", f"data.cache_dir={tmp_path}"])
        return compile_decision.decide_for_run(cfg, 65, GPU, "bf16", tmp_path, probe, flops_per_token=1e6,
                                               tokens_per_step=1e4, peak_flops=1e12)

    cpu_cfg = compose_config(["model=tiny", "train.max_iters=1000000"])
    on_cpu = compile_decision.decide_for_run(cpu_cfg, 65, CPU, "fp32", tmp_path, None, 1e6, 1e4, 1e12)
    assert not on_cpu.compile and on_cpu.saves_s is None  # a CPU never compiles by default, however long
    short, long = run_decision(1_000, {"bf16": EAGER_MS}), run_decision(1_000_000, {"bf16": EAGER_MS})
    assert not short.compile and long.compile and long.eager_step_from == "precision probe"
    assert long.eager_step_ms == EAGER_MS
    prior = run_decision(1_000_000, None)  # 1e10 FLOPs a step at 50% of 1e12 FLOP/s: 20 ms
    assert prior.eager_step_from.startswith("prior") and prior.eager_step_ms == 20.0 and prior.compile


def _gpu_plan(tmp_path, monkeypatch, *overrides, fail_compiled=False):
    monkeypatch.setattr(hardware, "device_caps", lambda *_: hardware.DeviceCaps(kind="cuda", bf16=True,
                                                                                 cuda_available=True))
    measured = []

    def measure(cfg, vocab_size, device, setting, seconds):
        measured.append(setting)
        if setting.compile and fail_compiled:
            raise RuntimeError("inductor: no C compiler\nmore lines")
        step_ms = COMPILED_MS if setting.compile else EAGER_MS + setting.batch_size
        return autotune.StepTiming(step_ms, steps=3, peak_bytes=2e6,
                                   first_step_ms=COLD_FIRST_STEP_MS if setting.compile else step_ms)

    cfg = compose_config(["model=tiny", "train.precision=fp32", "train.device=cuda", "train.batch_size=8",
                          f"data.cache_dir={tmp_path}", *overrides])
    result = plan.make_plan(cfg, 65, GPU, math.inf, say=lambda _: None, measure=measure)
    return cfg, result, [s for s in measured if s.compile]


def test_a_long_gpu_run_times_a_compiled_candidate_and_caches_its_compile(tmp_path, monkeypatch):
    cfg, result, compiled = _gpu_plan(tmp_path, monkeypatch, "train.max_iters=200000", "plan.budget_s=120")
    assert len(compiled) == 1  # one window: its compile counted once inside the budget
    assert result.best.setting.compile and result.best.status == plan.MEASURED
    decision = result.compile_decision
    assert decision["compile"] and decision["compiled_step_from"] == "timed"
    assert decision["compile_s_from"] == "measured by this plan"
    assert decision["compile_s"] == (COLD_FIRST_STEP_MS - (EAGER_MS + 1)) / 1000  # first compiled step - an eager
    assert compile_decision.expected_compile_seconds(result.best.setting.apply(cfg), 65, GPU, "fp32", tmp_path) == (
        round(decision["compile_s"], 2), "measured on this machine")
    assert any(note.startswith("compile on") for note in result.notes)
    record = json.loads(json.dumps(result.as_record()))  # run.json's plan, and the plan cache
    assert record["compile_decision"] == decision
    assert plan.Plan.from_record(record).compile_decision == decision
    assert result.apply(cfg).train.compile is True


def test_a_short_gpu_run_does_not_time_compile_and_trains_eager(tmp_path, monkeypatch):
    cfg, result, compiled = _gpu_plan(tmp_path, monkeypatch, "train.max_iters=100", "plan.budget_s=120")
    assert not compiled and not result.best.setting.compile
    assert not result.compile_decision["compile"]
    assert any("could not repay" in note for note in result.notes)
    assert result.apply(cfg).train.compile is False


def test_a_budget_that_cannot_afford_the_compile_decides_from_the_prior(tmp_path, monkeypatch):
    _, result, compiled = _gpu_plan(tmp_path, monkeypatch, "train.max_iters=200000")  # 6 s < the prior compile
    assert not compiled
    assert any("cannot afford" in note for note in result.notes)
    assert result.compile_decision["compiled_step_from"].startswith("prior")
    assert result.best.setting.compile and result.best.status == plan.ESTIMATED  # 200,000 steps repay it


def test_a_compiled_candidate_that_fails_leaves_compile_off(tmp_path, monkeypatch):
    _, result, compiled = _gpu_plan(tmp_path, monkeypatch, "train.max_iters=200000", "plan.budget_s=120",
                                    fail_compiled=True)
    assert compiled and not result.best.setting.compile
    assert not result.compile_decision["compile"] and "no C compiler" in result.compile_decision["reason"]
