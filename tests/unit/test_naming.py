"""Runs named by what makes them different: a sweep job by its own overrides, the same name everywhere."""

from __future__ import annotations

from pathlib import Path

from nanogpt_runner.analysis.naming import run_names
from nanogpt_runner.analysis.records import RunRecord


def job(run_id: str, *overrides, sweep: bool = True, name: str = "tiny") -> RunRecord:
    return RunRecord(run_id, Path(run_id), {"name": name, "overrides": list(overrides),
                                            "sweep": {"job": 0} if sweep else None})


def test_a_sweep_job_is_named_by_the_overrides_that_set_it_apart_the_seed_last():
    runs = [job("s/0", "model=tiny", "train.seed=1", "optimizer.lr=1e-3", "train.grad_accum=1"),
            job("s/1", "model=tiny", "train.seed=2", "optimizer.lr=3e-3", "train.grad_accum=4"),
            job("t/0", "technique=recompute", "train.seed=2"), job("t/1", "technique=baseline", "train.seed=2"),
            job("10-00-00_base", sweep=False)]
    assert run_names(runs) == {"s/0": "lr=1e-3 · accum=1 · seed=1", "s/1": "lr=3e-3 · accum=4 · seed=2",
                               "t/0": "technique=recompute", "t/1": "technique=baseline",
                               "10-00-00_base": "10-00-00_base"}


def test_names_stay_unique_and_hostile_overrides_are_ignored_or_cut():
    runs = [job("a/0", "optimizer.lr=1e-3"), job("a/1", "optimizer.lr=2e-3"),
            job("b/0", "optimizer.lr=1e-3"), job("b/1", "optimizer.lr=5e-3", 7, None),
            job("c/0", "x=" + "y" * 500), job("c/1", "x=z\n")]
    names = run_names(runs)
    assert names["a/0"] == "lr=1e-3 (a/0)" and names["b/0"] == "lr=1e-3 (b/0)" and names["b/1"] == "lr=5e-3"
    assert len(names["c/0"]) == 80 and names["c/0"].endswith("…") and names["c/1"] == "x=z "
    assert len(set(names.values())) == len(runs)
