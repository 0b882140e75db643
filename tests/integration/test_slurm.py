"""Against a real SLURM (a one-node cluster from Debian's packages, brought up by slurm_cluster.py): a sweep through
``hydra/launcher=slurm_torchrun``, and a pre-emption (``scancel -s USR2`` to every process of the job step) whose
checkpoint takes longer than SLURM's signal-to-kill gap, requeued by submitit, resumed to the end with every loss
equal to an uninterrupted run's. Without SLURM the same signal to every process of a group is tested on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slurm_cluster
from slurm_cluster import KILL_WAIT_S, SlurmCluster

from nanogpt_runner.runs.rundir import find_runs, read_run

slurm = slurm_cluster.slurm  # the session fixture
CLI = str(Path(sys.executable).parent / "nanogpt-run")
# The job's resources on the test cluster (the preset asks for GPUs, 16 cores and 64 GB). submitit counts a signal in
# a job's last 20% (or last 10 minutes) as its time limit, not a pre-emption: an hour keeps the test's a pre-emption.
ON_TEST_SLURM = ["hydra/launcher=slurm_torchrun", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=2",
                 "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60"]

# Every Python process of a test imports this (PYTHONPATH): each step pauses, so a signal lands mid-run, and
# each rank's first checkpoint takes SLOW_SAVE_S, longer than SLURM's KillWait.
SLOW_RUN = """
    import os, time
    from pathlib import Path

    from nanogpt_runner.checkpoint import checkpointer
    from nanogpt_runner.distributed import parallelize

    clip, start = parallelize.Parallelized.clip_grad_norm, checkpointer.start_checkpoint

    def clip_grad_norm(self, max_norm):
        time.sleep(float(os.environ["TEST_STEP_PAUSE_S"]))
        return clip(self, max_norm)

    def start_checkpoint(*args, **kwargs):
        marker = Path(os.environ["TEST_MARKERS"]) / f"slow-save-rank{os.environ.get('RANK')}"
        if not marker.exists():
            marker.touch()
            time.sleep(float(os.environ["TEST_SLOW_SAVE_S"]))
        return start(*args, **kwargs)

    parallelize.Parallelized.clip_grad_norm = clip_grad_norm
    checkpointer.start_checkpoint = start_checkpoint
"""


def _overrides(tiny: list[str], max_iters: int) -> list[str]:
    return [*tiny, "parallel=ddp", f"train.max_iters={max_iters}", f"train.eval_interval={max_iters}",
            "train.log_interval=1", "optimizer.warmup_iters=1", "train.ckpt_interval=0"]


def _losses(run_dir: Path) -> dict[int, float]:
    """Each step's train loss (a step logged again after a resume counts as its last line says)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def _slow_env(tmp_path: Path, base: dict[str, str]) -> dict[str, str]:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(textwrap.dedent(SLOW_RUN))
    (tmp_path / "markers").mkdir()
    return {**base, "PYTHONPATH": str(tmp_path / "inject"), "PYTHONUNBUFFERED": "1", "TEST_STEP_PAUSE_S": "0.1",
            "TEST_SLOW_SAVE_S": str(KILL_WAIT_S + 3), "TEST_MARKERS": str(tmp_path / "markers")}


def _wait(condition, what: str, timeout: float = 240, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := condition()):
            return found
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    output = proc.communicate()[0][-4000:] if proc is not None and proc.poll() is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s {output}")


def _training(root: Path):
    """The run directory once its metrics show a trained step."""
    for run_dir in find_runs(root):
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            return run_dir
    return None


@pytest.mark.slurm
def test_a_sweep_runs_each_job_as_a_slurm_job_with_a_torchrun_group(slurm: SlurmCluster, tmp_path, tiny_overrides):
    result = subprocess.run([CLI, "-m", *ON_TEST_SLURM, *_overrides(tiny_overrides, 2), "train.seed=1,2",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=slurm.env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [read_run(d) for d in find_runs(tmp_path / "sweep")]
    assert sorted(r["sweep"]["job"] for r in runs) == [0, 1]
    assert all(r["status"] == "completed" and r["world_size"] == 2 for r in runs)
    slurm_logs = list((tmp_path / "sweep").rglob(".submitit/*/*_log.out"))
    assert len(slurm_logs) == 2  # submitit really ran them as SLURM jobs


@pytest.mark.slurm
def test_a_preempted_job_checkpoints_is_requeued_and_resumes_to_the_same_losses(slurm: SlurmCluster, tmp_path,
                                                                                tiny_overrides):
    """``scancel -s USR2`` to every process of the job step, as SLURM's pre-emption does; each rank's checkpoint
    takes longer than KillWait, so a launcher that ended (and requeued) before its ranks would lose it."""
    max_iters = 40
    overrides = _overrides(tiny_overrides, max_iters)
    sweep = subprocess.Popen([CLI, "-m", *ON_TEST_SLURM, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                             cwd=tmp_path, env=_slow_env(tmp_path, slurm.env), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    run_dir = _wait(lambda: _training(tmp_path / "sweep"), "a trained step", proc=sweep)
    [job_id] = slurm.job_ids()
    for pid in slurm.step_pids(job_id):  # what `scancel -s USR2 JOB` does, each process named
        os.kill(pid, signal.SIGUSR2)

    _wait(lambda: slurm.job(job_id).get("Restarts") == "1" and slurm.job(job_id)["JobState"] == "PENDING",
          "the job requeued by submitit", proc=sweep)
    stopped = read_run(run_dir)
    assert stopped["status"] == "interrupted" and "stopped by SIGUSR2" in stopped["error"], stopped.get("error")
    output = _run_requeued_to_its_end(slurm, job_id, sweep, tmp_path / "sweep")
    assert sweep.returncode == 0, output[-4000:]

    resumed = read_run(run_dir)
    assert resumed["status"] == "completed" and resumed["summary"]["steps"] == max_iters
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [resume] = [e for e in events if e.get("event") == "resume"]
    assert 0 < resume["step"] < max_iters  # from the checkpoint the pre-emption saved, not from the start

    reference = tmp_path / "uninterrupted"
    plain = subprocess.run([CLI, *overrides, f"hydra.run.dir={reference}"], cwd=tmp_path,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert _losses(run_dir) == _losses(reference)


def _run_requeued_to_its_end(slurm: SlurmCluster, job_id: str, sweep: subprocess.Popen, sweep_dir: Path,
                             timeout: float = 300) -> str:
    """Start the requeued job (again while SLURM still holds it back) and return the sweep's output once it ends.

    Not at once: slurmd revokes the job's credential when it ends the killed run, and refuses a launch whose
    credential is not from a later second ("Job credential revoked"); SLURM then marks the job done, which is
    why SLURM itself delays a requeued job. So the test waits until the node has finished with that run (idle),
    and a second more. And submitit cannot see a job die here (no accounting: it waits for a result file), so a
    job that never ends fails the test with what SLURM and the job's own logs say instead of a bare timeout."""
    _wait(lambda: slurm.node_state() == "idle", "the node done with the requeued job's killed run")
    time.sleep(1.5)
    deadline = time.monotonic() + timeout
    while sweep.poll() is None and time.monotonic() < deadline:
        if slurm.job(job_id).get("JobState") == "PENDING":
            slurm.start_now(job_id)
        time.sleep(2)
    if sweep.poll() is None:
        sweep.kill()
        job_logs = sorted(sweep_dir.rglob(".submitit/*/*_log.*"))
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in job_logs)
        raise AssertionError(f"the requeued job did not end within {timeout} s\n{slurm.explain(job_id)}\n{logs}\n"
                             f"--- the sweep\n{sweep.communicate()[0][-3000:]}")
    return sweep.communicate()[0]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), as SLURM's process tracking finds a job step's."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += (below := children.get(todo.pop(), []))
        todo += below
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the group's processes in /proc")
def test_usr2_to_every_process_of_a_group_still_checkpoints_every_rank(tmp_path, tiny_overrides):
    """SLURM's way without SLURM: the launcher, the rank server and every rank get SIGUSR2 at once. The rank server
    ignores it (it used to die, and the agent then saw every rank fail); the launcher outlives its ranks'
    checkpoints; run.json records the first signal (SIGUSR2), not the launcher watch's later SIGTERM; and the
    torchrun agent leaves no temporary folder behind."""
    (tmp_path / "tmp").mkdir()
    env = {**_slow_env(tmp_path, dict(os.environ)), "TMPDIR": str(tmp_path / "tmp")}
    launcher = subprocess.Popen([CLI, *_overrides(tiny_overrides, 100000)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = _wait(lambda: _training(tmp_path / "outputs"), "a trained step", proc=launcher)
    for pid in [launcher.pid, *_descendants(launcher.pid)]:
        os.kill(pid, signal.SIGUSR2)
    output = launcher.communicate(timeout=240)[0]
    assert launcher.returncode == -signal.SIGUSR2, output[-4000:]
    run = read_run(run_dir)
    assert run["status"] == "interrupted" and "stopped by SIGUSR2" in run["error"], run.get("error")
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == ["slow-save-rank0", "slow-save-rank1"]
    assert list((run_dir / "checkpoints").glob("*")), "the pre-emption's checkpoint"
    leftovers = [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith(("torchelastic_", "nanogpt-agent-"))]
    assert leftovers == []  # the agent's log folder went with the group
