"""Hyperparameter search: Optuna's ask/tell loop as Hydra's sweeper (``hydra/sweeper=optuna``).

Why not hydra-optuna-sweeper: every release of that plugin (the newest, 1.3.0, included) requires
``optuna<3.0``, so it cannot be installed beside a current Optuna (5.x), and with it pip downgrades Optuna
to 2.10. This sweeper keeps the plugin's interface, so its presets read the same:
``hydra.sweeper.params`` maps keys to Hydra's sweep syntax (``interval(a, b)``, ``tag(log, interval(a, b))``,
``choice(...)``, ``range(...)``; a plain value is fixed), ``n_trials`` and ``n_jobs`` (trials asked per
batch, launched together) and ``sampler``; and it writes ``optimization_results.yaml`` (name,
best_params, best_value) into the sweep directory as the plugin does. The direction comes from
``sweep.objective`` unless ``direction`` is set. Each trial is an ordinary sweep job: the job returns its
objective (NaN for a failed job, which Optuna records as a failed trial), and re-running a search in the
same ``hydra.sweep.dir`` with the seeded sampler proposes the same trials, so completed ones are skipped.
Optuna is an optional extra (``pip install -e '.[optuna]'``), imported only when a search starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanogpt_runner.config.schema import OBJECTIVES
from nanogpt_runner.console import error

RESULTS_FILE = "optimization_results.yaml"
MISSING_OPTUNA = "the optuna sweeper needs Optuna: pip install -e '.[optuna]' (or pip install optuna)"


class OptunaSearch:
    """The search behind hydra_plugins.nanogpt_optuna_sweeper.OptunaSweeper (Hydra's plugin entry)."""

    def __init__(self, sampler: DictConfig | None = None, direction: str | None = None, n_trials: int = 20,
                 n_jobs: int = 1, study_name: str | None = None, params: DictConfig | None = None):
        self.sampler_config, self.direction, self.study_name = sampler, direction, study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        # Unresolved: a fixed value may be an interpolation for the job (${floordiv:32,${train.grad_accum}}).
        self.params = OmegaConf.to_container(params, resolve=False) if params is not None else {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        objective = OmegaConf.select(config, "sweep.objective", default="val_loss")
        problems = [f"hydra.sweeper.n_trials={self.n_trials} and hydra.sweeper.n_jobs={self.n_jobs} must be 1 or more."
                    ] if min(self.n_trials, self.n_jobs) < 1 else []
        if self.direction is None and objective not in OBJECTIVES:
            problems.append(f"sweep.objective={objective!r} is unknown: use one of {', '.join(OBJECTIVES)}.")
        elif self.direction not in (None, "minimize", "maximize"):
            problems.append(f"hydra.sweeper.direction={self.direction!r}: use minimize, maximize or null (the "
                            f"direction of sweep.objective).")
        if problems:
            error("invalid search:\n" + "\n".join(f"  - {p}" for p in problems))
            sys.exit(2)
        self.direction = self.direction or OBJECTIVES[objective]

    def sweep(self, arguments: list[str]) -> list:
        try:
            import optuna
        except ImportError:
            error(MISSING_OPTUNA)
            sys.exit(2)
        space, fixed = search_space([f"{key}={value}" for key, value in self.params.items()] + list(arguments))
        if not space:
            error("the search has nothing to search: give hydra.sweeper.params (e.g. hparams_search=lr_warmup_wd) "
                  "or a sweep on the command line, e.g. optimizer.lr=tag(log,interval(1e-4,1e-2))")
            sys.exit(2)
        sampler = instantiate(self.sampler_config) if self.sampler_config else None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.study_name, sampler=sampler, direction=self.direction)
        returns, job = [], 0
        while job < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - job))]
            overrides = [[f"{key}={value}" for key, value in {**trial.params, **fixed}.items()] for trial in trials]
            batch = self.launcher.launch(overrides, initial_job_idx=job)
            for trial, result in zip(trials, batch, strict=True):
                value = float(result.return_value)
                if value == value:  # NaN: the job failed
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            returns += batch
            job += len(batch)
        write_results(study, Path(self.config.hydra.sweep.dir))
        return returns


def search_space(arguments: list[str]) -> tuple[dict, dict[str, str]]:
    """Optuna distributions for the sweep overrides among ``arguments``, and the plain ones as fixed values."""
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def distribution(override: Override):
    """choice(...) and range(...) become a categorical over their values; interval(a, b) a float (an int when
    both ends are ints) distribution, log-scaled under tag(log, ...)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.is_interval_sweep():
        interval = override.value()
        log = "log" in interval.tags
        if isinstance(interval.start, int) and isinstance(interval.end, int):
            return IntDistribution(interval.start, interval.end, log=log)
        return FloatDistribution(float(interval.start), float(interval.end), log=log)
    return CategoricalDistribution(list(override.sweep_iterator()))


def write_results(study, sweep_dir: Path) -> Path | None:
    """optimization_results.yaml as hydra-optuna-sweeper writes it; None when no trial completed."""
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        error(f"no trial of the search completed, so there is no best value: see the jobs' run.json under {sweep_dir}")
        return None
    best = study.best_trial
    path = sweep_dir / RESULTS_FILE
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}), path)
    print(f"best of {len(study.trials)} trials: {best.params} -> {best.value:.4g} (written to {path})")
    return path



def register_sweeper() -> None:
    """Make ``hydra/sweeper=optuna`` known to Hydra however the package is installed: Hydra finds sweepers by
    walking the hydra_plugins namespace, and an editable install of an explicit package list hides our
    part of that namespace from the walk (the import itself still works)."""
    from hydra_plugins.nanogpt_optuna_sweeper import OptunaSweeper

    plugins = Plugins.instance()
    if f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}" not in plugins.class_name_to_class:
        plugins.register(OptunaSweeper)
