"""Hydra finds sweepers only in the ``hydra_plugins`` namespace: this is the entry of ``hydra/sweeper=optuna``
(conf/hydra/sweeper/optuna.yaml); the search itself is nanogpt_runner.launch.search. Nothing heavy is imported
here, since Hydra imports every plugin module whenever any Hydra app starts."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Optuna's ask/tell search over the sweep's parameters; see nanogpt_runner.launch.search."""

    def __init__(self, **options: Any) -> None:
        from nanogpt_runner.launch.search import OptunaSearch

        self.search = OptunaSearch(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
