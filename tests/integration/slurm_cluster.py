"""A one-node SLURM cluster on this machine, for the tests marked ``slurm`` (tests/integration/test_slurm.py).

When no SLURM answers (``scontrol ping``), the session fixture brings one up from Debian's packages
(``apt-get install slurmctld slurmd munge``, as .ci/run does): munged with the packaged key, then slurmctld and
slurmd on this host with a minimal slurm.conf in a temporary folder (proctrack/linuxproc and task/none, so no
cgroups or systemd are needed; no accounting: submitit's sacct calls fail and it reads its result files
instead). It takes a second or two, needs root (the daemons run as root), and is stopped at the end of
the session. Without the binaries, or without root, the tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel")
KILL_WAIT_S = 2  # SLURM's gap between its SIGTERM and SIGKILL when it ends a job step (a requeue, scancel)

SLURM_CONF = """\
ClusterName=nanogpt-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait={kill_wait}
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class SlurmCluster:
    """The cluster's client environment (SLURM_CONF) and the few commands the tests need."""

    env: dict[str, str]
    started: list[int] = field(default_factory=list)  # the daemons this session started (stopped at its end)

    def call(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Reason, Restarts, ...); empty once SLURM forgot the job."""
        try:
            text = self.call("scontrol", "-o", "show", "job", job_id)
        except subprocess.CalledProcessError:
            return {}
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def job_ids(self) -> list[str]:
        return self.call("squeue", "-h", "-o", "%i").split()

    def step_pids(self, job_id: str) -> list[int]:
        """Every process of the job's steps on this node (not the batch script), as ``scancel -s`` signals them."""
        lines = self.call("scontrol", "listpids", job_id).splitlines()[1:]
        return [int(line.split()[0]) for line in lines if line.split() and line.split()[2] not in ("batch", "extern")]

    def node_state(self) -> str:
        """The one node's state as sinfo says it: idle once the jobs it ran have been cleaned up."""
        return self.call("sinfo", "-h", "-o", "%T").strip()

    def start_now(self, job_id: str) -> None:
        """A requeued job waits (BeginTime) before it may run again; let it run now."""
        self.call("scontrol", "update", f"jobid={job_id}", "StartTime=now")  # (BeginTime is read-only by that name)

    def explain(self, job_id: str) -> str:
        """What a test that waited in vain prints: the job, the node (a drain says why) and slurmctld's last lines."""
        parts = [f"job: {self.job(job_id)}"]
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            parts.append("node: " + self.call("sinfo", "-N", "-h", "-o", "%N %T %E").strip())
        log = Path(self.env.get("SLURM_CONF", "/nonexistent")).parent / "slurmctld.log"
        if log.exists():
            parts.append("slurmctld.log:\n" + "\n".join(log.read_text().splitlines()[-25:]))
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(env: dict[str, str]) -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


def _start_munge(started: list[int]) -> None:
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, timeout=30)
    started.append(int(_wait_for_text(Path("/run/munge/munged.pid"))))


def _start_slurm(folder: Path, started: list[int]) -> dict[str, str]:
    host = socket.gethostname().split(".")[0]
    (folder / "state").mkdir(parents=True)
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=folder, ctld_port=_free_port(), slurmd_port=_free_port(),
                                      kill_wait=KILL_WAIT_S))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon, "-f", str(conf)], env=env, check=True, timeout=30)
        started.append(int(_wait_for_text(folder / f"{daemon}.pid")))  # written once the daemon has forked
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
        if state.strip() == "idle":
            return env
        time.sleep(0.2)
    raise RuntimeError(f"the test SLURM's node never became idle; see {folder}/slurmd.log and slurmctld.log")


def _wait_for_text(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A SLURM that answers: the one already running, or a one-node cluster brought up for this session."""
    if _answers(dict(os.environ)):
        yield SlurmCluster(dict(os.environ))
        return
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} not found): apt-get install slurmctld slurmd munge")
    if os.geteuid() != 0:
        pytest.skip("bringing up the test SLURM needs root (slurmctld and slurmd run as root here)")
    cluster = SlurmCluster({})
    try:
        _start_munge(cluster.started)
        cluster.env = _start_slurm(tmp_path_factory.mktemp("slurm"), cluster.started)
        yield cluster
    finally:
        _stop(cluster)


def _stop(cluster: SlurmCluster) -> None:
    """Cancel what is left of the tests' jobs, then end the daemons this session started (SIGKILL after 10 s)."""
    if cluster.env:
        subprocess.run(["scancel", "--full", *cluster.job_ids()], env=cluster.env, capture_output=True, timeout=60)
    for pid in reversed(cluster.started):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def main() -> None:
    """``sudo python tests/integration/slurm_cluster.py FOLDER``: the tests' one-node SLURM, left running, to try
    ``hydra/launcher=slurm_torchrun`` by hand (docs/distributed-and-clusters.md)."""
    import sys

    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        sys.exit("usage: sudo python tests/integration/slurm_cluster.py FOLDER (a new folder for its state and logs)")
    folder = Path(sys.argv[1]).resolve()
    cluster = SlurmCluster({})
    _start_munge(cluster.started)
    _start_slurm(folder, cluster.started)
    print(f"export SLURM_CONF={folder / 'slurm.conf'}\n"
          f"# to stop it: kill $(cat {folder / 'slurmctld.pid'}) $(cat {folder / 'slurmd.pid'})")


if __name__ == "__main__":
    main()
