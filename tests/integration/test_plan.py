"""nanogpt-plan and train.plan=auto: candidates that compute the same training are timed, what does not fit is
dropped, the fastest wins and is cached, and a run trains with it (recorded in run.json)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_config, run_cli

from nanogpt_runner.analysis import records as analysis
from nanogpt_runner.perf import autotune, memory, plan
from nanogpt_runner.runs.rundir import RunWriter

CPU = torch.device("cpu")


def fake_measure(ms_of):
    """Times from a function of the setting, and the settings measured, in order."""
    measured = []

    def measure(cfg, vocab_size, device, setting, seconds):
        measured.append(setting)
        return autotune.StepTiming(ms_of(setting), steps=3, peak_bytes=2e6)

    return measure, measured


def math_and_small_micro_batches_win(setting):
    return 10.0 + (5.0 if setting.attention == "sdpa" else 0.0) + setting.batch_size / 4 + 20 * setting.compile


def test_the_fastest_candidate_wins_and_the_math_stays_the_same(tmp_path):
    cfg = compose_config(["model=tiny", "train.batch_size=8", "train.grad_accum=1", "train.precision=fp32",
                          f"data.cache_dir={tmp_path}"])
    measure, measured = fake_measure(math_and_small_micro_batches_win)
    result = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=measure)
    best = result.best.setting
    assert (best.attention, best.batch_size, best.grad_accum) == ("math", 1, 8)
    assert all(s.batch_size * s.grad_accum == 8 for s in measured)  # every candidate trains the same global batch
    assert not any(s.compile for s in measured)  # 6 s of budget leave no room for a compile
    assert {c.status for c in result.candidates} == {plan.MEASURED, plan.OVER_BUDGET}
    applied = result.apply(cfg)
    assert (applied.model.attention, applied.train.batch_size, applied.train.grad_accum) == ("math", 1, 8)
    assert applied.optimizer.lr == cfg.optimizer.lr and applied.train.max_iters == cfg.train.max_iters
    restored = plan.Plan.from_record(json.loads(json.dumps(result.as_record())))
    assert restored.best.overrides() == result.best.overrides() and restored.cached


def test_a_candidate_within_timing_noise_does_not_replace_the_config_as_given(tmp_path):
    cfg = compose_config(["model=tiny", "train.batch_size=8", "train.grad_accum=1", "train.precision=fp32",
                          "model.attention=sdpa", f"data.cache_dir={tmp_path}"])
    # math 3% faster (noise), half the micro-batch 10% faster (real): only the split changes
    measure, _ = fake_measure(lambda s: (100.0 if s.attention == "sdpa" else 97.0) * (0.9 if s.batch_size == 4 else 1))
    best = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=measure).best.setting
    assert (best.attention, best.batch_size, best.grad_accum) == ("sdpa", 4, 2)


def test_candidates_over_memory_are_never_timed(tmp_path):
    cfg = compose_config(["model=shakespeare", "train.batch_size=8", "train.precision=fp32",
                          f"data.cache_dir={tmp_path}"])
    split = compose_config(["model=shakespeare", "train.batch_size=2", "train.grad_accum=4"])
    available = memory.estimate(split, 65, "cpu", "fp32").total * 1.001
    measure, measured = fake_measure(lambda s: 10.0)
    result = plan.make_plan(cfg, 65, CPU, available, say=lambda _: None, measure=measure)
    assert measured and all(s.batch_size <= 2 for s in measured)
    assert all(c.status == plan.OVER_MEMORY for c in result.candidates if c.setting.batch_size > 2)
    assert result.best.estimate_bytes <= available


def test_nothing_that_fits_is_one_clear_error(tmp_path):
    cfg = compose_config(["model=tiny", "train.precision=fp32", f"data.cache_dir={tmp_path}"])
    measure, measured = fake_measure(lambda s: 10.0)
    with pytest.raises(plan.PlanError, match="nothing fits"):
        plan.make_plan(cfg, 65, CPU, 1e6, say=lambda _: None, measure=measure)
    assert measured == []


def test_a_plan_is_cached(tmp_path, monkeypatch):
    cfg = compose_config(["model=tiny", "train.precision=fp32", f"data.cache_dir={tmp_path}"])
    measure, measured = fake_measure(math_and_small_micro_batches_win)
    monkeypatch.setattr(autotune, "time_steps", measure)
    first = plan.cached_plan(cfg, 65, CPU, math.inf, say=lambda _: None)
    count = len(measured)
    again = plan.cached_plan(cfg, 65, CPU, math.inf, say=lambda _: None)
    assert len(measured) == count and again.cached and again.best.overrides() == first.best.overrides()
    table = plan.plan_table(again)
    assert table.row_count == len(first.candidates)


def test_estimate_only_prints_the_memory_table(tiny_overrides, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "nanogpt-plan"), "--estimate-only", *tiny_overrides],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    for part in ("parameters", "gradients", "optimizer", "activations", "total per rank", "available (RAM)"):
        assert part in result.stdout
    assert "plan:" not in result.stdout


def test_a_bad_override_is_one_error_line(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "nanogpt-plan"), "plan.budget_s=0"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "plan.budget_s=0" in result.stderr and "Traceback" not in result.stderr


def test_train_plan_auto_trains_with_the_winner_and_records_the_plan(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*tiny_overrides, "train.plan=auto", "plan.budget_s=3", "train.max_iters=4",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "<- chosen" in result.stdout
    record = json.loads((run_dir / "run.json").read_text())
    winner = dict(o.split("=", 1) for o in record["plan"]["winner"])
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert str(config["train"]["batch_size"]) == winner["train.batch_size"]
    assert config["model"]["attention"] == winner["model.attention"]
    assert config["train"]["batch_size"] * config["train"]["grad_accum"] == 4  # tiny_overrides: batch 4, accum 1
    assert any(c["status"] == "measured" for c in record["plan"]["candidates"])


def test_the_analysis_names_what_plan_and_precision_auto_chose(tmp_path):
    result = plan.Plan([plan.Candidate(autotune.Setting("fp32", "math", False, False, 4, 2), 2, 1e8, plan.MEASURED,
                                       10.0, 12_345.0, 9e7)], 0, 6.0, 2.5)
    probe = autotune.PrecisionProbe("fp32", {"fp32": 10.0, "bf16": 14.0}, {})
    writer = RunWriter(tmp_path / "run", {"name": "r", "status": "completed", "plan": result.as_record(),
                                          "precision_probe": probe.as_record()})
    writer.update()
    writer.close()
    notes = " ".join(analysis.run_notes(analysis.load_runs(tmp_path)[0]))
    assert "plan: trained with train.precision=fp32 model.attention=math" in notes and "12,345 tokens/s" in notes
    assert "precision=auto chose fp32 (fp32 10.0 ms, bf16 14.0 ms per step)" in notes


def test_the_first_candidate_is_timed_whatever_the_budget(tmp_path):
    cfg = compose_config(["model=tiny", "train.precision=fp32", "plan.budget_s=0.000001", f"data.cache_dir={tmp_path}"])
    measure, measured = fake_measure(lambda s: 10.0)
    result = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=measure)
    assert len(set(measured)) == 1 and result.best.status == plan.MEASURED  # in its ROUNDS windows


@pytest.mark.parametrize(("max_iters", "timed_more"), [(100, False), (100_000, True)])
def test_a_plan_spends_at_most_its_share_of_the_run(tmp_path, monkeypatch, max_iters, timed_more):
    """10 ms steps: 100 steps train for 1 s, so the plan may spend 5% of that (only the config as given is
    timed); 100,000 steps leave plan.budget_s (6 s) as the limit. The clock advances as a real timing would."""
    clock = [0.0]
    monkeypatch.setattr(plan.time, "perf_counter", lambda: clock[0])

    def measure(cfg, vocab_size, device, setting, seconds):
        clock[0] += seconds
        measured.append(setting)
        return autotune.StepTiming(10.0, steps=3, peak_bytes=2e6)

    measured = []
    cfg = compose_config(["model=tiny", "train.batch_size=8", "train.precision=fp32", f"train.max_iters={max_iters}",
                          f"data.cache_dir={tmp_path}"])
    result = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=measure)
    assert (len(set(measured)) > 1) == timed_more
    if timed_more:
        assert result.budget_s == cfg.plan.budget_s and not result.notes
    else:
        assert result.budget_s == pytest.approx(plan.PLAN_SHARE * 1.0)
        assert result.notes == ["budget cut to 0.05 s: 5% of this run's 1 s of training"]


def test_the_planned_run_length_counts_every_budget(tmp_path):
    """1,000 steps of 10 ms train for 10 s, unless a time, token or FLOP budget ends the run sooner."""
    from nanogpt_runner.model.gpt import GPT

    base = ["model=tiny", "train.batch_size=8", "train.grad_accum=1", "train.max_iters=1000",
            f"data.cache_dir={tmp_path}"]
    tokens_per_step = 8 * compose_config(base).model.block_size
    flops_per_step = tokens_per_step * GPT(compose_config(base).model, 65).flops_per_token()
    for extra, seconds in [([], 10.0), (["train.max_time_s=2"], 2.0),
                           ([f"train.max_tokens={100 * tokens_per_step}"], 1.0),
                           ([f"train.max_flops={50 * flops_per_step}"], 0.5)]:
        assert plan.training_seconds(compose_config(base + extra), 65, 10.0) == pytest.approx(seconds), extra


def test_a_plan_starts_from_what_precision_auto_would_pick(tmp_path, monkeypatch):
    """On an H200 the small models train faster in fp32 (TF32) than in bf16, the GPU's usual choice. A plan
    whose budget runs out after its first candidate must not fall back to bf16: it starts from the probe's pick."""
    monkeypatch.setattr(plan.hardware, "precision_candidates", lambda *_: (["bf16", "fp32"], {}))
    cfg = compose_config(["model=tiny", "train.precision=auto", "plan.budget_s=0.000001", f"data.cache_dir={tmp_path}"])
    measure, measured = fake_measure(lambda s: 9.0 if s.precision == "fp32" else 11.0)
    result = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=measure)
    # the probe's two in interleaved windows, then the plan's first (in its own windows)
    rounds = autotune.ROUNDS
    assert [s.precision for s in measured] == ["bf16", "fp32"] * rounds + ["fp32"] * rounds
    assert result.best.setting.precision == "fp32"
    assert result.notes[0].startswith("precision=auto chose fp32")
