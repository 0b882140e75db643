"""The Optuna search against real Optuna, with a stand-in launcher (no training): a kept study that a re-run
continues, trials numbered as their jobs, proposals rounded to what the jobs ran, settings checked by name."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from nanogpt_runner.launch.search import STUDY_FILE, OptunaSearch, sweeper_problems

SPACE = ["optimizer.lr=tag(log,interval(1e-4,1e-2))", "optimizer.warmup_iters=choice(0,50)", "model=tiny"]


class Launcher:
    """Records each launch (its job numbers and overrides) and returns the lr as the objective."""

    def __init__(self):
        self.jobs: dict[int, list[str]] = {}

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> list:
        for number, job in enumerate(overrides, initial_job_idx):
            self.jobs[number] = job
        return [SimpleNamespace(return_value=float(job[0].split("=")[1])) for job in overrides]


def search(sweep_dir, n_trials: int, **options) -> tuple[OptunaSearch, Launcher]:
    found = OptunaSearch(sampler=OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 1}),
                         direction="minimize", n_trials=n_trials, **options)
    found.config, found.launcher = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}), Launcher()
    return found, found.launcher


def test_the_study_is_kept_in_the_sweep_folder_and_a_rerun_continues_it(tmp_path, capsys):
    first, launched = search(tmp_path, 3)
    first.sweep(SPACE)
    assert sorted(launched.jobs) == [0, 1, 2] and (tmp_path / STUDY_FILE).exists()
    for job in launched.jobs.values():  # a proposal runs at 4 significant digits, and the rest as given
        lr = float(job[0].removeprefix("optimizer.lr="))
        assert lr == float(f"{lr:.4g}") and job[2] == "model=tiny"
    again, relaunched = search(tmp_path, 3)
    again.sweep(SPACE)
    assert relaunched.jobs == {} and "nothing left to run" in capsys.readouterr().out
    more, added = search(tmp_path, 5)
    more.sweep(SPACE)
    assert sorted(added.jobs) == [3, 4]  # new trials, numbered after the study's
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.best_value == min(float(j[0].split("=")[1]) for j in [*launched.jobs.values(),
                                                                          *added.jobs.values()])


def test_a_trial_a_stopped_search_left_running_is_run_again_as_the_same_job(tmp_path):
    first, launched = search(tmp_path, 2)
    study = first.open_study(optuna)
    left = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                      "optimizer.warmup_iters": optuna.distributions.CategoricalDistribution([0, 50])})
    first.sweep(SPACE)
    assert launched.jobs[0][0] == f"optimizer.lr={float(format(left.params['optimizer.lr'], '.4g'))}"
    assert sorted(launched.jobs) == [0, 1]
    states = [t.state for t in first.open_study(optuna).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_named_storage_and_study_are_used_as_given(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    named, _ = search(tmp_path / "sweep", 1, storage=storage, study_name="lr-search")
    named.sweep(SPACE)
    assert optuna.load_study(study_name="lr-search", storage=storage).trials
    assert not (tmp_path / "sweep" / STUDY_FILE).exists()


def test_a_storage_optuna_cannot_open_is_one_line(tmp_path, capsys):
    broken, _ = search(tmp_path, 1, storage="nosuchdb://nowhere")
    with pytest.raises(SystemExit) as stopped:
        broken.sweep(SPACE)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "cannot open the study" in err and len(err.strip().splitlines()) == 1


def test_an_unknown_sweeper_setting_is_named_with_the_known_ones():
    sweeper = OmegaConf.create({"_target_": "hydra_plugins.nanogpt_optuna_sweeper.OptunaSweeper", "n_trials": 2,
                                "storag": "sqlite:///x.db"})
    [problem] = sweeper_problems(sweeper)
    assert problem.startswith("hydra.sweeper.storag is not a setting") and "storage" in problem
    assert sweeper_problems(OmegaConf.create({"_target_": "hydra._internal.BasicSweeper", "x": 1})) == []
