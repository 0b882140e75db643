"""Hyperparameter search: Optuna's ask/tell loop as Hydra's sweeper (``hydra/sweeper=optuna``).

Why not hydra-optuna-sweeper: every release of that plugin (the newest, 1.3.0, included) requires
``optuna<3.0``, so it cannot be installed beside a current Optuna (5.x), and with it pip downgrades Optuna
to 2.10. This sweeper keeps the plugin's interface, so its presets read the same:
``hydra.sweeper.params`` maps keys to Hydra's sweep syntax (``interval(a, b)``, ``tag(log, interval(a, b))``,
``choice(...)``, ``range(...)``; a plain value is fixed), ``n_trials`` and ``n_jobs`` (trials asked per
batch, launched together) and ``sampler``; and it writes ``optimization_results.yaml`` (name,
best_params, best_value) into the sweep directory as the plugin does. The direction comes from
``sweep.objective`` unless ``direction`` is set. Each trial is an ordinary sweep job, numbered as its trial:
the job returns its objective (NaN for a failed job, which Optuna records as a failed trial).

The study is kept in ``storage`` (default: ``sqlite:///SWEEP_DIR/optuna.db``) under ``study_name`` (default:
the sweep folder's path), so re-running the same command continues it: a trial a stopped search left
running is run again as the same job (which resumes from its checkpoint), and new trials are asked until
the study holds ``n_trials``. A float Optuna proposes is rounded to FLOAT_DIGITS significant digits before
its job runs, so the job's overrides, the sweep table and optimization_results.yaml show the value that
trained (Optuna's own record keeps its proposal, a relative difference under 1e-3).
Optuna is an optional extra (``pip install -e '.[optuna]'``), imported only when a search starts.
"""

from __future__ import annotations

import inspect
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
STUDY_FILE = "optuna.db"  # the default storage, in the sweep folder
FLOAT_DIGITS = 4  # significant digits of a proposed float (Optuna proposes 17)
MISSING_OPTUNA = "the optuna sweeper needs Optuna: pip install -e '.[optuna]' (or pip install optuna)"
SWEEPER_TARGET = "hydra_plugins.nanogpt_optuna_sweeper.OptunaSweeper"


def rounded(value):
    """A float at FLOAT_DIGITS significant digits; anything else as it is."""
    return float(f"{value:.{FLOAT_DIGITS}g}") if isinstance(value, float) else value


def sweeper_problems(sweeper: DictConfig) -> list[str]:
    """Keys of ``hydra.sweeper`` this sweeper does not know, each as one sentence: checked before Hydra makes
    the sweep folder, so a typo leaves nothing behind."""
    if sweeper.get("_target_") != SWEEPER_TARGET:
        return []
    known = [name for name in inspect.signature(OptunaSearch).parameters]
    return [f"hydra.sweeper.{key} is not a setting of the optuna sweeper: use {', '.join(known)}"
            for key in sweeper if not str(key).startswith("_") and key not in known]


class OptunaSearch:
    """The search behind hydra_plugins.nanogpt_optuna_sweeper.OptunaSweeper (Hydra's plugin entry)."""

    def __init__(self, sampler: DictConfig | None = None, direction: str | None = None, n_trials: int = 20,
                 n_jobs: int = 1, study_name: str | None = None, storage: str | None = None,
                 params: DictConfig | None = None):
        self.sampler_config, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
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
        study = self.open_study(optuna)
        left_running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if study.trials:
            print(f"continuing the study in {self.storage_url()}: {len(study.trials)} of hydra.sweeper.n_trials="
                  f"{self.n_trials} trials so far"
                  + (f"; {len(left_running)} left running by a stopped search run again" if left_running else "")
                  + ("; nothing left to run (raise n_trials to search further)"
                     if not left_running and len(study.trials) >= self.n_trials else ""))
        returns = []
        for trial in left_running:  # each as the job it was: its folder holds the run to resume
            returns += self.launch(study, [trial], space, fixed)
        while len(study.trials) < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - len(study.trials)))]
            returns += self.launch(study, trials, space, fixed)
        write_results(study, Path(self.config.hydra.sweep.dir))
        return returns

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.config.hydra.sweep.dir).resolve() / STUDY_FILE}"

    def open_study(self, optuna):
        """The study this sweep folder (or ``storage`` and ``study_name``) holds, created on the first run."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = instantiate(self.sampler_config) if self.sampler_config else None
        name = self.study_name or str(Path(self.config.hydra.sweep.dir).resolve())
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # where the default storage goes
        try:
            return optuna.create_study(storage=self.storage_url(), study_name=name, sampler=sampler,
                                       direction=self.direction, load_if_exists=True)
        except (ValueError, ImportError, optuna.exceptions.OptunaError, *_database_errors()) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            error(f"cannot open the study {name!r} in hydra.sweeper.storage={self.storage_url()}: {reason}; use a "
                  f"database URL Optuna can open (sqlite:///PATH.db), or another hydra.sweeper.study_name")
            sys.exit(2)

    def launch(self, study, trials: list, space: dict, fixed: dict[str, str]) -> list:
        """Run the trials' jobs (numbered as the trials) and tell the study each one's objective. The overrides
        are in the search space's order whatever order the storage gives, so a job run again has the same."""
        import optuna

        overrides = [[f"{key}={rounded(trial.params[key])}" for key in space if key in trial.params]
                     + [f"{key}={value}" for key, value in fixed.items()] for trial in trials]
        batch = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
        for trial, result in zip(trials, batch, strict=True):
            value = float(result.return_value)
            if value == value:  # NaN: the job failed
                study.tell(trial.number, value)
            else:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return batch


def _database_errors() -> tuple[type[Exception], ...]:
    """SQLAlchemy's errors (a URL it cannot parse, a database it cannot reach), when Optuna's RDB storage has it."""
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        return ()
    return (SQLAlchemyError,)


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
    params = {key: rounded(value) for key, value in best.params.items()}  # as its job ran them
    path = sweep_dir / RESULTS_FILE
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": params, "best_value": rounded(best.value)}),
                   path)
    print(f"best of {len(study.trials)} trials: {params} -> {best.value:.4g} (written to {path})")
    return path



def register_sweeper() -> None:
    """Make ``hydra/sweeper=optuna`` known to Hydra however the package is installed: Hydra finds sweepers by
    walking the hydra_plugins namespace, and an editable install of an explicit package list hides our
    part of that namespace from the walk (the import itself still works)."""
    from hydra_plugins.nanogpt_optuna_sweeper import OptunaSweeper

    plugins = Plugins.instance()
    if f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}" not in plugins.class_name_to_class:
        plugins.register(OptunaSweeper)
