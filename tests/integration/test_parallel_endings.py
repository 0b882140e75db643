"""How a process group ends: every ending leaves the group (not only success), and a stop signal sent to
``nanogpt-run`` (SIGUSR2 is SLURM's warning before the time limit) reaches every rank, ends in a checkpoint,
and the run resumes from it. Gloo, 2 processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from conftest import compose_config, run_cli
from omegaconf import OmegaConf

from nanogpt_runner.checkpoint.folder import resolve
from nanogpt_runner.runs.rundir import find_runs, read_run

ENDINGS = {"non_finite": "NonFiniteLoss", "interrupted": "Interrupted", "checkpoint_error": "CheckpointError"}


def _overrides(tiny_overrides: list[str], *extra: str) -> list[str]:
    """``tiny_overrides`` with the keys in ``extra`` replaced by ``extra``'s values."""
    keys = {item.split("=", 1)[0] for item in extra}
    return [item for item in tiny_overrides if item.split("=", 1)[0] not in keys] + list(extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_early(ending: str) -> None:
    """Make this rank's run end the way ``ending`` names, as the real cause would."""
    from nanogpt_runner import errors
    from nanogpt_runner.checkpoint import checkpointer as resume
    from nanogpt_runner.distributed import parallelize as parallel
    from nanogpt_runner.train import signals as run_control

    if ending == "non_finite":
        forward_backward = parallel.Parallelized.forward_backward
        parallel.Parallelized.forward_backward = lambda *a, **k: forward_backward(*a, **k) * float("nan")
    elif ending == "interrupted":
        run_control.StopSignals.requested = lambda self: True
    else:
        def refuse(self):
            raise errors.CheckpointError("the checkpoint to resume from is damaged (test)")

        resume.Checkpointer.restore = refuse


def _rank(rank: int, world: int, port: int, run_dir: str, data_dir: str, ending: str) -> None:
    """One torchrun-like worker: train until the ending, then report whether the process group is left."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from nanogpt_runner.data.prepared import load_prepared
    from nanogpt_runner.distributed.process_group import NullWriter
    from nanogpt_runner.errors import RunStopped
    from nanogpt_runner.train.loop import train
    from nanogpt_runner.train.worker import load_run_config

    _end_early(ending)
    try:
        train(load_run_config(Path(run_dir)), Path(run_dir), load_prepared(Path(data_dir)), NullWriter())
        outcome = "completed"
    except RunStopped as err:
        outcome = type(err).__name__
    report = {"outcome": outcome, "group_left": not dist.is_initialized()}
    (Path(run_dir) / f"ending-rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_ending_leaves_the_process_group(ending, tmp_path, tiny_overrides):
    from nanogpt_runner.launch.app import check

    cfg = compose_config(_overrides(tiny_overrides, "parallel=ddp", "train.batch_size=2", "train.max_iters=4"))
    _, problems, data = check(cfg, [], announce=lambda _m: None)
    assert not problems, problems
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    mp.start_processes(_rank, args=(2, _free_port(), str(run_dir), str(data.directory), ending), nprocs=2,
                       start_method="spawn")
    reports = [json.loads((run_dir / f"ending-rank{rank}.json").read_text()) for rank in range(2)]
    assert reports == [{"outcome": ENDINGS[ending], "group_left": True}] * 2


def _wait_for_training(root: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The run directory once its metrics show a trained step (a started group, not a starting one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for run_dir in find_runs(root):
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and '"kind": "train"' in metrics.read_text():
                return run_dir
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no trained step within {timeout} s: {proc.communicate()}")


def preempt_and_resume(tmp_path: Path, overrides: list[str]) -> None:
    """Start a 2-rank run, send ``nanogpt-run`` SIGUSR2 once it trains, check that every rank stopped at one
    step with a checkpoint, then resume it from that checkpoint to two steps further."""
    overrides = _overrides(overrides, "train.log_interval=1", "optimizer.warmup_iters=1", "train.max_iters=100000",
                           "run.name=preempted")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nanogpt-run"), *overrides],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_for_training(tmp_path / "outputs", proc)
    proc.send_signal(signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=240)

    # The launcher waited for the ranks to checkpoint, then let the signal end it as it would have.
    assert proc.returncode == -signal.SIGUSR2, stderr[-3000:]
    run = read_run(run_dir)
    assert run["status"] == "interrupted" and "stopped by SIGUSR2" in run["error"], run.get("error")
    step = int(re.search(r"after step (\d+)", run["error"]).group(1))
    _, meta = resolve(run_dir, "latest", announce=lambda _m: None)
    assert meta["step"] == step and meta["world_size"] == 2
    assert {f"rng-rank{r}.pt" for r in range(2)} <= set(meta["files"])  # manifest gathered from every rank

    result = run_cli(_overrides(overrides, f"train.max_iters={step + 2}", f"resume={run_dir}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_run(run_dir)
    assert resumed["status"] == "completed" and resumed["summary"]["steps"] == step + 2


def test_sigusr2_reaches_every_rank_ends_in_a_checkpoint_and_the_run_resumes(tmp_path, tiny_overrides):
    preempt_and_resume(tmp_path, _overrides(tiny_overrides, "parallel=ddp", "train.batch_size=2"))


def _descendants(pid: int) -> list[int]:
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _training_group(tmp_path: Path, tiny_overrides: list[str], name: str) -> tuple[subprocess.Popen, Path, list[int]]:
    """A 2-rank run started by ``nanogpt-run`` and training: the launcher, its run directory, and every process
    under the launcher (the ranks, the rank server they were forked from, its helpers)."""
    overrides = _overrides(tiny_overrides, "parallel=ddp", "train.batch_size=2", "train.log_interval=1",
                           "train.max_iters=100000", f"run.name={name}")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nanogpt-run"), *overrides], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = _wait_for_training(tmp_path / "outputs", proc)
    processes = _descendants(proc.pid)
    # The launcher's children are the rank server and multiprocessing's resource tracker; the ranks are forked
    # from the server.
    assert len([pid for pid in processes if _parent(pid) != proc.pid]) == 2
    return proc, run_dir, processes


def _all_end(processes: list[int]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(_alive(pid) for pid in processes):
        time.sleep(0.5)
    try:
        assert not any(_alive(pid) for pid in processes), "processes outlived their launcher"
    finally:
        for pid in processes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pidfd is Linux's")
def test_ranks_of_a_launcher_killed_outright_checkpoint_and_end_instead_of_training_on(tmp_path, tiny_overrides):
    proc, run_dir, processes = _training_group(tmp_path, tiny_overrides, "orphaned")
    proc.kill()  # SIGKILL: the launcher cannot tell the ranks anything
    proc.wait()
    _all_end(processes)
    run = read_run(run_dir)
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"], run.get("error")
    _, meta = resolve(run_dir, "latest", announce=lambda _m: None)
    assert meta["world_size"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_sigterm_to_every_process_of_a_group_as_slurm_sends_it_ends_in_one_checkpoint(tmp_path, tiny_overrides):
    """SLURM's scancel and time limit signal every process of a job step: the launcher, the ranks, and the rank
    server the ranks were forked from. The server's end must not reach the ranks as a second stop signal
    (one that ends a rank before its checkpoint)."""
    proc, run_dir, processes = _training_group(tmp_path, tiny_overrides, "cancelled")
    for pid in [proc.pid, *processes]:
        os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=240)
    _all_end(processes)
    run = read_run(run_dir)
    assert run["status"] == "interrupted" and "stopped by SIGTERM" in run["error"], run.get("error")
    step = int(re.search(r"after step (\d+)", run["error"]).group(1))
    _, meta = resolve(run_dir, "latest", announce=lambda _m: None)
    assert meta["step"] == step and meta["world_size"] == 2


def test_a_rank_interrupted_before_it_trains_fails_rather_than_returning_nothing():
    """torch.multiprocessing's wrapper ends a rank that raised KeyboardInterrupt with exit code 0 and no return
    value, which torchrun's agent would wait on for ever: a rank interrupted while it starts exits 130."""
    rank = ("import os, sys\n"
            "from nanogpt_runner.train import worker\n"
            "def interrupted(run_dir, launcher):\n"
            "    raise KeyboardInterrupt\n"
            "worker.run_in = interrupted\n"
            "worker.run_rank('RUN_DIR', os.getppid())\n")
    assert subprocess.run([sys.executable, "-c", rank], capture_output=True).returncode == 128 + signal.SIGINT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pidfd and /proc are Linux's")
@pytest.mark.parametrize("kernel", ["with pidfds", "before pidfds"])
def test_a_process_watching_its_launcher_gets_sigterm_when_the_launcher_ends(kernel):
    watcher = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from nanogpt_runner.train import worker
        if {kernel == "before pidfds"}:
            def no_pidfds(pid):
                raise OSError(38, "Function not implemented")
            os.pidfd_open = no_pidfds
        launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
        worker.stop_with_the_launcher(launcher.pid)
        launcher.wait()
        time.sleep(60)
    """)
    assert subprocess.run([sys.executable, "-c", watcher], timeout=120).returncode == -signal.SIGTERM
