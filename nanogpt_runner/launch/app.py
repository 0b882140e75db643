"""``nanogpt-run``: the Hydra entry. Validate, make the run directory, then train.

A single run trains in this process. Each sweep job (``-m``) trains in a child process, so a job that
crashes or leaks memory cannot take the sweep down with it; the job records its outcome in its run
directory and returns, and the sweep summary (nanogpt_runner.launch.sweep) decides the exit code at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nanogpt_runner.checkpoint.resume_plan import ResumePlan, plan_resume
from nanogpt_runner.config.schema import (
    CONF_DIR,
    Config,
    as_dict,
    register_schema,
    starts_from_weights,
    to_config,
    world_size,
)
from nanogpt_runner.config.validate import config_warnings, data_problems, validate
from nanogpt_runner.console import error
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.data.prepared import DataError, PreparedData, cache_dir
from nanogpt_runner.data.tasks import task_problems
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.fsutil import open_nofollow, write_atomic
from nanogpt_runner.launch.search import register_sweeper, sweeper_problems
from nanogpt_runner.launch.study import record_unsupported, unsupported_reason
from nanogpt_runner.launch.sweep import (
    SKIPPED,
    SweepMismatch,
    forget_outcome,
    job_objective,
    previous_attempt,
    record_action,
)
from nanogpt_runner.launch.torchrun import (
    fill_cluster_rendezvous,
    hidden_gpus_problem,
    in_rank_server,
    run_group,
    start_rank_server,
)
from nanogpt_runner.runs.rundir import CONFIG_FILE, LOCK_FILE, RUN_FILE, RunWriter
from nanogpt_runner.runs.trackers import logger_problems
from nanogpt_runner.weights.nanogpt_resume import import_checkpoint as import_nanogpt_checkpoint
from nanogpt_runner.weights.nanogpt_resume import nanogpt_checkpoint
from nanogpt_runner.weights.nanogpt_resume import resume_config as nanogpt_resume_config

EXIT_INVALID_CONFIG = 2


def check(cfg: Config, overrides: list[str], announce=print) -> tuple[Config, list[str], PreparedData | None]:
    """(the config the run trains with, every problem with it, data included, the prepared data when there
    is none). A new run that starts from weights takes their architecture first.

    The config alone is checked before torch is imported (a mistyped value is refused in about a second,
    not after torch's import); what depends on the device, the data and the memory follows."""
    problems: list[str] = []
    if starts_from_weights(cfg):
        from nanogpt_runner.weights.init_from import apply_init_from

        cfg, problems = apply_init_from(cfg, overrides, CONF_DIR, announce)
    problems += validate(cfg)
    if problems:
        return cfg, problems, None
    from nanogpt_runner.perf.hardware import device_caps, memory_refusal
    from nanogpt_runner.weights.init_from import vocabulary_problems

    problems = validate(cfg, device_caps(cfg.train.device))  # the config's own checks passed: the device's
    if hidden := hidden_gpus_problem(cfg):
        problems.append(hidden)
    problems += logger_problems(cfg.logger)
    if problems:
        return cfg, problems, None
    try:
        data = prepare(cfg.data, announce=announce)
    except DataError as err:
        return cfg, [str(err)], None
    problems = data_problems(cfg, data.split_sizes()) + vocabulary_problems(cfg, data.tokenizer)
    problems += task_problems(cfg.eval.tasks, data.tokenizer, cfg.model.block_size, cache_dir(cfg.data),
                              cfg.eval.max_items, cfg.data.download_timeout_s)
    if not problems and cfg.train.plan != "auto" and (refused := memory_refusal(cfg, data.vocab_size)):
        problems.append(refused)  # (a plan picks a setting that fits, or says that none does)
    if problems:
        return cfg, problems, None
    return to_config(cfg), [], data  # the run-time config: the schema's dataclass from here on


def resumed_config(cfg: Config, run_dir: Path, overrides: list[str],
                   announce=print) -> tuple[Config, ResumePlan | None, Path | None]:
    """(the config this launch trains with, the plan when it continues a run of this runner in place, the
    ckpt.pt when ``resume=`` names nanoGPT's out_dir, imported as a new run once the config passes its
    checks). nanogpt-run and the check the viewer's launch form calls both decide here. CheckpointError when
    the resume cannot go ahead."""
    nanogpt = nanogpt_checkpoint(cfg.resume) if cfg.resume else None
    if nanogpt is not None:
        return nanogpt_resume_config(cfg, nanogpt, overrides, CONF_DIR), None, nanogpt
    plan = plan_resume(cfg, run_dir, overrides, CONF_DIR, announce)
    return (cfg if plan is None else plan.cfg), plan, None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_job(cfg: Config) -> int:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    fill_cluster_rendezvous(cfg)
    if world_size(cfg.parallel) > 1:
        start_rank_server()  # its imports run beside this process's, which start below (torch is imported lazily)

    # Resume (resume=PATH, or train.resume=auto in a run dir with checkpoints) continues an existing run
    # in place, with the checkpoint's config plus the allowed overrides; Hydra's new dir is then unused.
    fresh_dir, fresh_root, plan, speed_plan = run_dir, Path(cfg.run.root), None, None
    try:
        if sweep and cfg.resume:
            raise CheckpointError(
                f"resume={cfg.resume} in a sweep would make every job continue that same run: resume it with "
                f"a single nanogpt-run (no -m), or sweep new runs without resume=")
        cfg, plan, nanogpt = resumed_config(cfg, run_dir, list(hydra_cfg.overrides.task))
    except CheckpointError as err:
        problems, data = [str(err)], None
    else:
        if plan is not None:
            run_dir = plan.run_dir
        cfg, problems, data = check(cfg, list(hydra_cfg.overrides.task))
        if nanogpt is not None and not problems:
            try:
                cfg = import_nanogpt_checkpoint(nanogpt, cfg, run_dir, data.tokenizer)
            except CheckpointError as err:
                problems = [str(err)]
        if not problems and cfg.train.plan == "auto":  # the fastest setting that fits, timed (cached)
            from nanogpt_runner.perf.plan import plan_run

            cfg, speed_plan, problems = plan_run(cfg, data.vocab_size, elsewhere=in_rank_server)
    if problems:
        message = "invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
        error(message)
        if not sweep:
            if not (fresh_dir / RUN_FILE).exists():  # never delete a run that exists (a refused resume)
                _remove_run_dir(fresh_dir, fresh_root)
            sys.exit(EXIT_INVALID_CONFIG)
        RunWriter(fresh_dir, _identity(cfg, fresh_dir, hydra_cfg)).update(
            status="failed", error=message, end_time=time.time())
        return EXIT_INVALID_CONFIG
    if plan is not None and plan.run_dir != fresh_dir.resolve() and not (fresh_dir / RUN_FILE).exists():
        _remove_run_dir(fresh_dir, fresh_root)
    with run_dir_lock(run_dir, cfg) as busy:
        if busy:
            error(busy)
            if not sweep:
                sys.exit(EXIT_INVALID_CONFIG)
            return EXIT_INVALID_CONFIG
        return _start(cfg, run_dir, data, plan, speed_plan, hydra_cfg, sweep)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, cfg: Config):
    """While it is held, no other nanogpt-run trains into ``run_dir``; yields None, or the refusal when
    another live process holds it.

    An exclusive ``flock`` on RUN_DIR/.lock, held by this launching process for as long as the run
    (in-process, or its torchrun group or sweep child) lasts. The kernel releases it when the process
    ends, however it ends, so a crashed or killed run leaves nothing stuck. The node agents of a
    multi-node run share their run directory by design (their rendezvous admits exactly nnodes), so
    they take no lock."""
    if cfg.parallel.nnodes > 1:
        yield None
        return
    try:
        handle = open_nofollow(run_dir / LOCK_FILE, "a+")  # a planted symlink is refused, never written through
    except OSError as err:
        yield (f"cannot use {run_dir / LOCK_FILE} as the run's lock ({err.strerror or err}): remove it if it is "
               f"a symlink or not a regular file, then start again")
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            yield (f"{run_dir} is in use: another nanogpt-run (pid {holder}) is training into it; wait for it to "
                   f"end or stop it, or choose another hydra.run.dir")
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield None  # closing the file releases the lock


def _start(cfg: Config, run_dir: Path, data: PreparedData, plan, speed_plan, hydra_cfg, sweep: bool) -> int:
    """Record the run as queued in its directory, then train it: here, in a torchrun group, or (a sweep
    job) in a child process."""
    write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(as_dict(cfg)))
    writer = RunWriter(run_dir, plan.run_record() if plan else _identity(cfg, run_dir, hydra_cfg))
    writer.update(status="queued", dataset=data.as_record(), **({"plan": speed_plan.as_record()} if speed_plan else {}))
    writer.close()
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    if world_size(cfg.parallel) > 1:
        code = run_group(cfg.parallel, run_dir)  # a torchrun process group; run.json records a failure
        if code and not sweep:
            error(f"the run failed (exit code {code}); the error is in {run_dir / 'run.json'}")
            sys.exit(code)
        return code
    if not sweep:
        from nanogpt_runner.train.worker import execute, load_run_config

        code = execute(load_run_config(run_dir), run_dir, data)
        if code:
            sys.exit(code)
        return 0
    return subprocess.run(worker_command(run_dir), cwd=os.getcwd()).returncode


def worker_command(run_dir: Path) -> list[str]:
    """A sweep job's training process. ``-P``: the working directory (the user's, which relative paths in the
    config mean) is not on sys.path, so a ``nanogpt_runner/`` folder planted there is never imported."""
    return [sys.executable, "-P", "-m", "nanogpt_runner.train.worker", str(run_dir)]


def _remove_run_dir(run_dir: Path, root: Path) -> None:
    """Remove a refused run's directory and the date folders Hydra made for it, if now empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    root = root.resolve()
    parent = run_dir.resolve().parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _identity(cfg: Config, run_dir: Path, hydra_cfg) -> dict:
    return {
        "id": uuid.uuid4().hex[:12],
        "name": cfg.run.name,
        "run_dir": str(run_dir.resolve()),
        "start_time": time.time(),
        "overrides": list(hydra_cfg.overrides.task),
        "sweep": {"dir": str(Path(hydra_cfg.sweep.dir).resolve()), "job": hydra_cfg.job.num}
        if hydra_cfg.mode == RunMode.MULTIRUN else None,
        "git_commit": git_commit(),
        "config": as_dict(cfg),
    }


class RunDirCheck(Callback):
    """Hydra callback: make the run (or sweep) directory before Hydra does, so one that cannot be made or
    written (under /proc, a read-only disk, a file in the way) is one line naming it and why, exit 2,
    instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _make_writable_dir("hydra.run.dir", "run", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if problems := sweeper_problems(config.hydra.sweeper):  # before the folder: a typo leaves nothing behind
            error("; ".join(problems))
            sys.exit(EXIT_INVALID_CONFIG)
        _make_writable_dir("hydra.sweep.dir", "sweep", config.hydra.sweep.dir)


def _make_writable_dir(key: str, kind: str, path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        failed = Path(err.filename) if err.filename else None
        where = f" ({failed})" if failed is not None and failed in Path(path).parents else ""
        error(f"cannot use {key}={path} as the {kind} directory: {err.strerror or err}{where}; choose a directory "
              f"you can write (e.g. run.root=outputs)")
        sys.exit(EXIT_INVALID_CONFIG)


register_schema()
register_sweeper()


def run_sweep_job(cfg: Config) -> float:
    """One job of a sweep; returns its objective, the number a search sweeper optimizes (NaN: it failed).

    Re-running a sweep in the same hydra.sweep.dir skips the jobs that completed and continues the
    others (from their latest checkpoint when they have one); run.json's sweep.action says which."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        action = previous_attempt(run_dir, list(hydra_cfg.overrides.task))
    except SweepMismatch as err:
        error(str(err))
        sys.exit(EXIT_INVALID_CONFIG)
    if action != SKIPPED:
        forget_outcome(run_dir)
        if (reason := unsupported_reason(cfg)) is None:
            run_job(cfg)
        else:  # a study arm this machine cannot run: listed in the study's card with the reason
            print(f"not run on this machine: {reason}", file=sys.stderr)
            record_unsupported(run_dir, _identity(cfg, run_dir, hydra_cfg), reason)
    record_action(run_dir, action)
    return job_objective(run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: Config) -> float | None:
    """A single run exits with its outcome; a sweep job returns its objective to the sweeper."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    run_job(cfg)
    return None


def compose_overrides(overrides: list[str]) -> tuple[Config | None, list[str]]:
    """(the config ``nanogpt-run OVERRIDES`` composes, []) or (None, [why it cannot be composed]): for the
    tools that check or plan a run without starting it."""
    from hydra import compose, initialize_config_dir

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides), []
    except (HydraException, OmegaConfBaseException) as err:
        return None, [composition_error(err)]


def composition_error(err: Exception) -> str:
    """Hydra's composition error and the OmegaConf error under it as one line (what, where, the fix).

    A group member that does not exist (``model=nosuch``) is named with the members there are; Hydra's own
    report adds its config search path, which only a plugin author needs."""
    missing = next((e for e in (err, err.__cause__) if isinstance(e, MissingConfigException)), None)
    if missing is not None and missing.missing_cfg_file:
        group, _, name = missing.missing_cfg_file.rpartition("/")
        # Hydra lists the members of a group chosen by name, not of one chosen as a list (logger=[...])
        members = missing.options or sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        if members:
            return f"{group}={name} is not a member of the {group} group: use one of {', '.join(members)}"
    parts = [str(err), str(err.__cause__ or "")]
    lines = [line.strip().rstrip(".") for part in parts for line in part.splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(
        ("full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")))


# Hydra's flags that take a value (kept with it when a command line is rebuilt without -m)
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
               "-cd", "--experimental-rerun")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def describe_sweep_refusal(argv: list[str]) -> str | None:
    """``--cfg``/``--info`` describe one run and ``-m`` starts a sweep: Hydra refuses the pair with a traceback.
    One line instead, giving the command that describes the sweep's first job; None without the pair."""
    if not {"-m", "--multirun"} & set(argv) or not {"--cfg", "-c", "--info", "-i"} & {a.split("=")[0] for a in argv}:
        return None
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg, following = argv[i], argv[i + 1:i + 2]
        with_topic = arg in ("--info", "-i") and following and following[0] in INFO_TOPICS
        width = 2 if arg in VALUE_FLAGS or with_topic else 1
        if arg not in ("-m", "--multirun"):
            (flags if arg.startswith("-") else overrides).extend(argv[i:i + width])
        i += width
    return (f"--cfg and --info describe one run, -m starts a sweep: describe the sweep's first job with "
            f"nanogpt-run {shlex.join([*flags, *_first_job(overrides)])}")


def _first_job(overrides: list[str]) -> list[str]:
    """The overrides of a basic sweep's first job (each swept field at its first value); as given when they
    cannot be expanded here (glob() needs the config loader; a bad override is Hydra's to name)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0][0]
    except (HydraException, IndexError):
        return overrides


def main() -> None:
    # Hydra would print its own multi-line report of a bad override and exit 1: take its errors here
    # instead, and say what is wrong in one line with the invalid-config exit code.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if refusal := describe_sweep_refusal(sys.argv[1:]):
        error(refusal)
        sys.exit(EXIT_INVALID_CONFIG)
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        error(f"invalid config: {composition_error(err)}")
        sys.exit(EXIT_INVALID_CONFIG)
