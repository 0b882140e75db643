"""train.plan=auto never turns off a setting it did not time: a config's train.compile=true stays when the budget
leaves no room for a cold compile (the plan used to time only eager candidates and pick one of them)."""

from __future__ import annotations

import math

import torch
from conftest import compose_config

from nanogpt_runner.perf import autotune, plan


def _measure(measured):
    def measure(cfg, vocab_size, device, setting, seconds):
        measured.append(setting)
        return autotune.StepTiming(10.0 + setting.batch_size, steps=3, peak_bytes=2e6)

    return measure


def _plan(tmp_path, *overrides):
    cfg = compose_config(["model=tiny", "train.precision=fp32", "train.batch_size=8", f"data.cache_dir={tmp_path}",
                          *overrides])
    measured = []
    result = plan.make_plan(cfg, 65, torch.device("cpu"), math.inf, say=lambda _: None, measure=_measure(measured))
    return result, measured


def test_compile_from_the_config_is_kept_when_the_plan_cannot_time_it(tmp_path):
    result, measured = _plan(tmp_path, "train.compile=true")
    assert measured and not any(s.compile for s in measured)  # 6 s of budget: no cold compile timed
    assert result.best.setting.compile and result.best.status == plan.KEPT
    assert result.apply(compose_config(["model=tiny", "train.compile=true"])).train.compile
    assert any("compile kept" in note for note in result.notes)
    assert result.best.setting.batch_size == 1  # the rest of the search still chose (the smallest micro-batch)


def test_without_compile_in_the_config_the_plan_does_not_add_it_untimed(tmp_path):
    result, _ = _plan(tmp_path)
    assert not result.best.setting.compile and result.best.status == plan.MEASURED

