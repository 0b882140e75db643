"""precision=auto by probe: the fastest measured precision wins, the result is cached, an emulated dtype is never
timed, and timing does not change what the run draws from the RNG."""

from __future__ import annotations

import json

import torch
from conftest import compose_config, run_cli

from nanogpt_runner.perf import autotune

CPU = torch.device("cpu")


def fake_measure(step_ms: dict[str, float]):
    """A stand-in for timing real steps: returns the given time per precision and records each call."""
    calls = []

    def measure(cfg, vocab_size, device, setting, seconds):
        calls.append(setting.precision)
        return autotune.StepTiming(step_ms[setting.precision], steps=3, peak_bytes=1e6)

    return measure, calls


def test_the_fastest_precision_is_chosen_and_cached(tmp_path):
    cfg = compose_config(["model=tiny"])
    measure, calls = fake_measure({"fp32": 30.0, "bf16": 12.0})
    probe = autotune.probe_precision(cfg, 65, CPU, ["fp32", "bf16"], {}, tmp_path, measure)
    assert (probe.choice, probe.step_ms, probe.cached) == ("bf16", {"fp32": 30.0, "bf16": 12.0}, False)
    assert calls == ["fp32", "bf16"] * autotune.ROUNDS  # interleaved windows: A B A B A B
    again = autotune.probe_precision(cfg, 65, CPU, ["fp32", "bf16"], {}, tmp_path, measure)
    assert (again.choice, again.cached) == ("bf16", True) and len(calls) == 2 * autotune.ROUNDS  # not measured again
    assert "bf16 12.0 ms/step, fp32 30.0 ms/step, cached" in again.describe()


def test_a_slower_bf16_loses_and_the_cache_is_per_micro_batch(tmp_path):
    measure, calls = fake_measure({"fp32": 10.0, "bf16": 14.0})  # nanoGPT's baby model on an AMX CPU
    small = autotune.probe_precision(compose_config(["model=tiny", "train.batch_size=4"]), 65, CPU,
                                     ["fp32", "bf16"], {}, tmp_path, measure)
    assert small.choice == "fp32"
    autotune.probe_precision(compose_config(["model=tiny", "train.batch_size=8"]), 65, CPU, ["fp32", "bf16"], {},
                             tmp_path, measure)
    assert calls == ["fp32", "bf16"] * 2 * autotune.ROUNDS


def test_a_near_tie_keeps_the_devices_usual_precision(tmp_path):
    cfg = compose_config(["model=tiny"])
    measure, _ = fake_measure({"fp32": 10.0, "bf16": 9.8})  # 2% faster: within timing noise
    assert autotune.probe_precision(cfg, 65, CPU, ["fp32", "bf16"], {}, tmp_path, measure).choice == "fp32"
    measure, _ = fake_measure({"bf16": 10.0, "fp32": 9.8})  # a GPU lists bf16 first
    assert autotune.probe_precision(cfg, 65, CPU, ["bf16", "fp32"], {}, tmp_path / "gpu", measure).choice == "bf16"


def test_one_candidate_is_not_timed_and_the_skip_is_reported(tmp_path):
    measure, calls = fake_measure({})
    probe = autotune.probe_precision(compose_config(["model=tiny"]), 65, CPU, ["fp32"],
                                     {"bf16": "emulated on this CPU"}, tmp_path, measure)
    assert probe.choice == "fp32" and calls == []
    assert probe.describe() == "precision=auto chose fp32 (the only candidate); bf16 skipped: emulated on this CPU"
    assert probe.as_record()["skipped"] == {"bf16": "emulated on this CPU"}


def test_a_burst_of_load_in_one_window_does_not_decide_the_precision(tmp_path):
    """fp32 is faster, but a burst of load from elsewhere lands on one of its windows: the median outvotes it
    (one reading per candidate, as before the windows, would have chosen bf16)."""
    readings = {"fp32": [10.0, 30.0, 10.0], "bf16": [12.0, 12.0, 12.0]}

    def measure(cfg, vocab_size, device, setting, seconds):
        return autotune.StepTiming(readings[setting.precision].pop(0), steps=3, peak_bytes=1e6)

    probe = autotune.probe_precision(compose_config(["model=tiny"]), 65, CPU, ["bf16", "fp32"], {}, tmp_path, measure)
    assert probe.choice == "fp32" and probe.step_ms == {"bf16": 12.0, "fp32": 10.0}


def test_interleaved_windows_keep_each_candidates_median_and_drop_a_failing_one():
    order = []

    def window(name, times):
        def timed(seconds):
            order.append((name, seconds))
            if times is None:
                raise RuntimeError("unsupported")
            return autotune.StepTiming(times.pop(0), steps=2, peak_bytes=len(times))
        return timed

    a, b, broken = autotune.interleaved([window("a", [5.0, 1.0, 3.0]), window("b", [2.0, 2.0, 9.0]),
                                         window("broken", None)], seconds=3.0)
    assert [name for name, _ in order] == ["a", "b", "broken", "a", "b", "a", "b"]
    assert all(seconds == 1.0 for _, seconds in order)  # each window a third of the candidate's time
    assert (a.step_ms, a.steps, a.peak_bytes) == (3.0, 6, 2) and b.step_ms == 2.0
    assert isinstance(broken, RuntimeError)


def test_a_precision_whose_probe_fails_is_skipped_with_the_reason(tmp_path):
    def measure(cfg, vocab_size, device, setting, seconds):
        if setting.precision == "bf16":
            raise torch.OutOfMemoryError("out of memory")
        return autotune.StepTiming(20.0, steps=3, peak_bytes=1e6)

    probe = autotune.probe_precision(compose_config(["model=tiny"]), 65, CPU, ["bf16", "fp32"], {}, tmp_path, measure)
    assert probe.choice == "fp32" and "OutOfMemoryError" in probe.skipped["bf16"]


def test_timing_real_steps_leaves_the_rng_alone():
    cfg = compose_config(["model=tiny", "train.batch_size=2"])
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    timing = autotune.time_steps(cfg, 65, CPU, autotune.Setting.of(cfg, "fp32"), seconds=0.0)
    assert torch.equal(torch.rand(3), expected)
    assert timing.step_ms > 0 and timing.steps == 2 and timing.peak_bytes > 0


def test_a_run_says_and_records_what_auto_chose(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*tiny_overrides, "train.precision=auto", "train.max_iters=2", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "run.json").read_text())
    probe = record["precision_probe"]
    assert probe["choice"] == record["precision"] and f"precision=auto chose {probe['choice']}" in result.stdout
