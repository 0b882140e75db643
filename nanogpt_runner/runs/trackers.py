"""Mirror a run into the trackers a team already uses: TensorBoard, Weights & Biases, trackio, MLflow.

Each tracker is one ``Tracker`` adapter behind the same four calls (start, scalars, text, finish). The
``Trackers`` fan-out subscribes to the run's ``RunWriter``, so every tracker receives exactly the lines
metrics.jsonl holds, after they are on disk: train and eval lines as scalars namespaced ``train/loss``,
``val/loss``, ``train/mfu``..., event lines as text, plus the flattened config as hyperparameters, the
run's name, tags, note, group and final status. A tracker that fails (disk, network, a bug of its own)
is warned about once and dropped: training goes on and metrics.jsonl keeps every line.

The trackers' packages are optional extras (``pip install -e '.[wandb]'``) imported only when a run asks
for one; ``logger_problems`` refuses a missing one before the run starts. ``replay`` feeds an existing
run's files through the same adapters (``nanogpt-export-logs``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from nanogpt_runner.config.saved import interpolation_problem
from nanogpt_runner.config.schema import LoggerConfig, flatten
from nanogpt_runner.fsutil import UnsafeFolder, refuse_symlinks
from nanogpt_runner.runs.rundir import EVAL, EVENT, METRICS_FILE, RUN_FILE, TRAIN, MetricsTail, read_run

FINISHED = ("completed", "failed", "interrupted")  # the run.json statuses a run ends with (worker._end)
NOT_SCALARS = {"kind", "time", "step"}  # step is every tracker's x axis; time is when the line was written


@dataclass
class RunIdentity:
    """What a tracker shows about the run besides its metrics."""

    run_dir: Path
    name: str
    run_id: str
    group: str | None
    tags: list[str]
    notes: str
    hyperparameters: dict[str, str | int | float | bool] = field(default_factory=dict)

    @classmethod
    def of(cls, run_dir: Path, record: dict) -> RunIdentity:
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        run = config.get("run") if isinstance(config.get("run"), dict) else {}
        sweep = record.get("sweep") if isinstance(record.get("sweep"), dict) else None
        group = run.get("group") or (Path(str(sweep["dir"])).name if sweep and sweep.get("dir") else None)
        return cls(
            run_dir=Path(run_dir),
            name=str(record.get("name") or Path(run_dir).name),
            run_id=str(record.get("id") or Path(run_dir).name),
            group=str(group) if group else None,
            tags=[str(tag) for tag in run.get("tags") or []],
            notes=str(run.get("notes") or ""),
            hyperparameters={key: value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
                             for key, value in flatten(config).items() if value is not None},
        )


def namespaced(line: dict) -> dict[str, float]:
    """A train or eval line's numbers under the names trackers show: a train line's ``loss`` is ``train/loss``;
    an eval line's ``val_loss`` is ``val/loss`` and its other fields ``eval/...`` (``eval/train_loss``: the
    train split evaluated, not the training window's mean)."""
    kind, values = line.get("kind"), {}
    for key, value in line.items():
        if key in NOT_SCALARS:
            continue
        number = _number(value)
        if number is None:
            continue
        if kind == TRAIN:
            values[f"train/{key}"] = number
        elif kind == EVAL:
            values[f"val/{key[4:]}" if key.startswith("val_") else f"eval/{key}"] = number
    return values


def _number(value) -> float | None:
    """A metrics value as a float (NaN and inf are written as strings), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


class Tracker(ABC):
    """One tracker's adapter; ``settings`` is its section of the ``logger`` config. Every adapter implements
    the four methods below (an adapter missing one cannot be made)."""

    name = ""
    module = ""  # the import that must be available; the pip extra has the tracker's name

    def __init__(self, settings):
        self.settings = settings

    @abstractmethod
    def start(self, run: RunIdentity) -> None:
        """Open the tracker's run (named and tagged from ``run``), with the config as its parameters."""

    @abstractmethod
    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log one metrics line's numbers at ``step``."""

    @abstractmethod
    def text(self, step: int, tag: str, text: str) -> None:
        """Log an event line of the metrics (its JSON) as text under ``tag`` at ``step``."""

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the tracker's run, marked with the run's final ``status``."""


class TensorBoardTracker(Tracker):
    """Event files under RUN_DIR/<logger.tensorboard.dir>, written by torch's SummaryWriter."""

    name, module = "tensorboard", "tensorboard"

    def start(self, run: RunIdentity) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run.run_dir / self.settings.dir))
        # The hparams plugin's records, in this run's own event file (add_hparams would open another folder).
        for summary in hparams(run.hyperparameters, {}):
            self.writer._get_file_writer().add_summary(summary)
        self.writer.add_text("run", _describe(run), 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run in the run directory's wandb/ folder; WANDB_MODE=offline keeps it there for ``wandb sync``."""

    name, module = "wandb", "wandb"

    def start(self, run: RunIdentity) -> None:
        import wandb

        self.run = wandb.init(project=self.settings.project, entity=self.settings.entity, name=run.name,
                              group=run.group, tags=run.tags or None, notes=run.notes or None,
                              config=run.hyperparameters, dir=str(run.run_dir), reinit="create_new")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: text}, step=step)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


class TrackioTracker(Tracker):
    """A trackio run in its local store (a project per ``logger.trackio.project``)."""

    name, module = "trackio", "trackio"

    def start(self, run: RunIdentity) -> None:
        import trackio

        self.run = trackio.init(project=self.settings.project, name=run.name, group=run.group,
                                config={**run.hyperparameters, "tags": ",".join(run.tags), "notes": run.notes})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: text}, step=step)

    def finish(self, status: str) -> None:
        self.run.log({"status": status})
        self.run.finish()


class MlflowTracker(Tracker):
    """An MLflow run in ``logger.mlflow.experiment`` of the tracking URI (a local store by default)."""

    name, module = "mlflow", "mlflow"
    BATCH = 100  # MLflow takes at most 100 params per log_batch call

    def start(self, run: RunIdentity) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        experiment = self.client.get_experiment_by_name(self.settings.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            self.settings.experiment)
        tags = {"nanogpt.run_id": run.run_id, "nanogpt.run_dir": str(run.run_dir), "mlflow.note.content": run.notes,
                **({"group": run.group} if run.group else {}), **{f"tag.{tag}": "true" for tag in run.tags}}
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in run.hyperparameters.items()]
        for start in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + self.BATCH])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def text(self, step: int, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{tag}/step{step:09d}.json")

    def finish(self, status: str) -> None:
        self.client.set_tag(self.run_id, "status", status)
        ending = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, ending)


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoardTracker, WandbTracker, TrackioTracker,
                                                          MlflowTracker)}


def chosen(loggers) -> list[str]:
    """The trackers a ``logger`` config section turns on, in TRACKERS order."""
    return [name for name in TRACKERS if getattr(loggers, name).enabled]


def logger_problems(loggers) -> list[str]:
    """One sentence per chosen tracker whose package is not installed, with the line that installs it."""
    return [f"logger={name} needs the {TRACKERS[name].module} package, which is not installed: "
            f"pip install -e '.[{name}]' (or pip install {TRACKERS[name].module})"
            for name in chosen(loggers) if importlib.util.find_spec(TRACKERS[name].module) is None]


class Trackers:
    """The chosen trackers as one ``RunWriter`` subscriber. Every call to a tracker is guarded: the first
    failure is warned about and the tracker dropped; the run never sees the exception."""

    def __init__(self, trackers: list[Tracker], run: RunIdentity, warn=None):
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
        self.trackers = []
        for tracker in trackers:
            if self._call(tracker, "start", run):
                self.trackers.append(tracker)

    def log(self, line: dict) -> None:
        step = line.get("step") if isinstance(line.get("step"), int) else 0
        if line.get("kind") == EVENT:
            tag, text = f"event/{line.get('event', 'event')}", json.dumps(line)
            self._each("text", step, tag, text)
        elif values := namespaced(line):
            self._each("scalars", step, values)

    def update(self, record: dict) -> None:
        """A run.json status that ends the run finishes every tracker with it."""
        if record.get("status") in FINISHED:
            self.finish(record["status"])

    def finish(self, status: str) -> None:
        self._each("finish", status)
        self.trackers = []

    def _each(self, method: str, *args) -> None:
        self.trackers = [t for t in self.trackers if self._call(t, method, *args)]

    def _call(self, tracker: Tracker, method: str, *args) -> bool:
        try:
            getattr(tracker, method)(*args)
            return True
        except Exception as err:  # a tracker's own failure (disk, network, its bugs) never stops the run
            self.warn(f"logger {tracker.name} failed ({type(err).__name__}: {err}); it is off for the rest of "
                      f"the run, and metrics.jsonl keeps every line")
            return False


def open_trackers(loggers, run_dir: Path, record: dict, warn=None) -> Trackers | None:
    """The trackers the ``logger`` section chooses, started for this run; None when it chooses none."""
    names = chosen(loggers)
    if not names:
        return None
    return Trackers([TRACKERS[name](getattr(loggers, name)) for name in names], RunIdentity.of(run_dir, record), warn)


def replay(run_dir: Path, tracker_name: str, loggers=None, warn=None) -> int:
    """Send an existing run's metrics.jsonl, in order, and its status to one tracker; the lines sent.

    ``loggers`` (a ``logger`` section) gives the tracker's settings: the caller's (its command line and the
    user's environment), else the defaults; never the run's own run.json, which may come from anyone and would
    choose where its data goes. A run whose run.json holds an interpolation (``${...}``) or whose folder holds
    a symlink is not replayed: ``warn`` is told why, in one line."""
    record = read_run(run_dir) or {}
    problem = interpolation_problem(record, f"{Path(run_dir) / RUN_FILE}")
    if problem is None:
        try:
            refuse_symlinks(run_dir)  # the tracker writes into the run folder (tensorboard/, wandb/)
        except UnsafeFolder as err:
            problem = str(err)
    if problem is not None:
        (warn or (lambda message: print(f"warning: {message}", file=sys.stderr)))(f"not replayed: {problem}")
        return 0
    loggers = OmegaConf.structured(LoggerConfig) if loggers is None else loggers
    trackers = Trackers([TRACKERS[tracker_name](getattr(loggers, tracker_name))], RunIdentity.of(run_dir, record), warn)
    tail, sent = MetricsTail(Path(run_dir) / METRICS_FILE), 0
    while lines := tail.poll()[0]:
        for line in lines:
            trackers.log(line)
        sent += len(lines)
    trackers.finish(str(record.get("status", "unknown")))
    return sent


def _describe(run: RunIdentity) -> str:
    parts = [f"**{run.name}** ({run.run_id})", f"run directory: {run.run_dir}"]
    if run.group:
        parts.append(f"group: {run.group}")
    if run.tags:
        parts.append("tags: " + ", ".join(run.tags))
    if run.notes:
        parts.append(f"notes: {run.notes}")
    return "  \n".join(parts)

