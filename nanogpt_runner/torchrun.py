"""Starting a run's process group: the torchrun command line, and what a failed group leaves behind.

Hydra's torchrun launcher plugin was never published, so the Hydra job starts torchrun itself, as a
child process: ``python -m torch.distributed.run ... -m nanogpt_runner.worker RUN_DIR``. The workers read
the resolved config from the run directory, never from Hydra (which would make one output dir per rank).
One node uses a standalone rendezvous (a fresh free port each time, so sweep jobs never collide); several
nodes meet at a c10d rendezvous on ``parallel.rdzv_endpoint``. No torch import: this runs in the parent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from nanogpt_runner.runs import LOG_FILE, RunWriter, read_run


def threads_per_rank(par) -> int:
    """CPU threads each rank may use: the configured number, or the cores shared by this node's ranks."""
    return par.threads_per_rank or max((os.cpu_count() or 1) // par.nproc_per_node, 1)


def torchrun_command(par, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={par.nproc_per_node}",
           f"--nnodes={par.nnodes}", f"--max-restarts={par.max_restarts}", "--monitor-interval=0.5"]
    if par.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={par.rdzv_endpoint}", f"--rdzv-id={par.rdzv_id}"]
    return cmd + ["-m", "nanogpt_runner.worker", str(run_dir)]


def run_group(par, run_dir: Path) -> int:
    """Run the process group to its end; returns its exit code after recording a failure in run.json."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_rank(par)))
    code = subprocess.run(torchrun_command(par, run_dir), env=env).returncode
    return record_group_failure(run_dir, code)


def record_group_failure(run_dir: Path, code: int) -> int:
    """When torchrun failed, make run.json say so with every failing rank's traceback.

    Rank 0 may not know why the group died (its peer vanished mid-collective, or torchrun stopped it),
    so the error text gathers the tracebacks each rank left in its own log. A run that rank 0 recorded
    as completed stays completed (exit code 0) even if a process then stumbled at exit.
    """
    record = read_run(run_dir)
    if code == 0 or record is None:
        return code
    if record.get("status") == "completed":
        return 0
    traces = rank_tracebacks(run_dir)
    own = record.get("error")
    parts = [f"rank {rank}: {trace}" for rank, trace in traces.items()]
    if own and not any(own.strip() in trace for trace in traces.values()):
        parts.insert(0, own)
    message = "\n".join(parts) or f"the process group exited with code {code} (see the rank logs in {run_dir})"
    writer = RunWriter(run_dir)
    try:
        writer.update(status="failed", end_time=time.time(), error=message, exit_code=code)
    finally:
        writer.close()
    return code


def rank_tracebacks(run_dir: Path) -> dict[int, str]:
    """The last traceback in each rank's log (rank 0's is train.log), by rank."""
    traces = {}
    logs = {0: Path(run_dir) / LOG_FILE}
    for path in Path(run_dir).glob("rank*.log"):
        match = re.fullmatch(r"rank(\d+)\.log", path.name)
        if match:
            logs[int(match.group(1))] = path
    for rank, path in sorted(logs.items()):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        start = text.rfind("Traceback (most recent call last)")
        if start >= 0:
            traces[rank] = text[start:].strip()
    return traces


def fill_cluster_rendezvous(cfg) -> None:
    """On a cluster job started by submitit (hydra/launcher=submitit_slurm) with ``parallel.nnodes > 1``
    and no endpoint given, meet on the job's first node, keyed by the job id.

    submitit runs the Hydra job once per task; with one task per node, each node starts its own torchrun
    agent, and the agents form one group through the c10d rendezvous on the first node."""
    par = cfg.parallel
    if par.nnodes <= 1 or par.rdzv_endpoint:
        return
    try:
        import submitit

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not inside a submitit job: validate asks for the endpoint
        return
    port = 29500 + sum(job.job_id.encode()) % 1000  # jobs sharing a node should not share a port
    par.rdzv_endpoint = f"{job.hostnames[0]}:{port}"
    par.rdzv_id = f"nanogpt-{job.job_id}"
