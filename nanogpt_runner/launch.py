"""``nanogpt-run``: the Hydra entry. Validate, make the run directory, then train.

A single run trains in this process. Each sweep job (``-m``) trains in a child process, so a job that
crashes or leaks memory cannot take the sweep down with it; the job records its outcome in its run
directory and returns, and the sweep summary (nanogpt_runner.sweep) decides the exit code at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nanogpt_runner.config import data_problems, layout_warnings, register_schema, validate
from nanogpt_runner.console import error
from nanogpt_runner.data import DataError, PreparedData, prepare
from nanogpt_runner.resume import plan_resume
from nanogpt_runner.run_control import CheckpointError
from nanogpt_runner.runs import CONFIG_FILE, RUN_FILE, RunWriter
from nanogpt_runner.torchrun import fill_cluster_rendezvous, run_group

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_INVALID_CONFIG = 2


def check(cfg: DictConfig, announce=print) -> tuple[list[str], PreparedData | None]:
    """Every problem with ``cfg``, data included; the prepared data when there is none."""
    from nanogpt_runner.hardware import device_caps

    problems = validate(cfg, device_caps(cfg.train.device))
    if problems:
        return problems, None
    try:
        data = prepare(cfg.data, announce=announce)
    except DataError as err:
        return [str(err)], None
    problems = data_problems(cfg, data.split_sizes())
    return problems, None if problems else data


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_job(cfg: DictConfig) -> int:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    fill_cluster_rendezvous(cfg)
    # Resume (resume=PATH, or train.resume=auto in a run dir with checkpoints) continues an existing run
    # in place, with the checkpoint's config plus the allowed overrides; Hydra's new dir is then unused.
    fresh_dir, fresh_root, plan = run_dir, Path(cfg.run.root), None
    try:
        if sweep and cfg.resume:
            raise CheckpointError(
                f"resume={cfg.resume} in a sweep would make every job continue that same run: resume it with "
                f"a single nanogpt-run (no -m), or sweep new runs without resume=")
        plan = plan_resume(cfg, run_dir, list(hydra_cfg.overrides.task), CONF_DIR)
    except CheckpointError as err:
        problems, data = [str(err)], None
    else:
        if plan is not None:
            cfg, run_dir = plan.cfg, plan.run_dir
        problems, data = check(cfg)
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

    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    writer = RunWriter(run_dir, plan.run_record() if plan else _identity(cfg, run_dir, hydra_cfg))
    writer.update(status="queued", dataset=data.as_record())
    writer.close()
    for warning in layout_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.parallel.nproc_per_node * cfg.parallel.nnodes > 1:
        code = run_group(cfg.parallel, run_dir)  # a torchrun process group; run.json records a failure
        if code and not sweep:
            error(f"the run failed (exit code {code}); the error is in {run_dir / 'run.json'}")
            sys.exit(code)
        return code
    if not sweep:
        from nanogpt_runner.worker import execute, load_run_config

        code = execute(load_run_config(run_dir), run_dir, data)
        if code:
            sys.exit(code)
        return 0
    return subprocess.run([sys.executable, "-m", "nanogpt_runner.worker", str(run_dir)]).returncode


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


def _identity(cfg: DictConfig, run_dir: Path, hydra_cfg) -> dict:
    return {
        "id": uuid.uuid4().hex[:12],
        "name": cfg.run.name,
        "run_dir": str(run_dir.resolve()),
        "start_time": time.time(),
        "overrides": list(hydra_cfg.overrides.task),
        "sweep": {"dir": str(Path(hydra_cfg.sweep.dir).resolve()), "job": hydra_cfg.job.num}
        if hydra_cfg.mode == RunMode.MULTIRUN else None,
        "git_commit": git_commit(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


register_schema()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> int:
    return run_job(cfg)


def main() -> None:
    _hydra_main()
