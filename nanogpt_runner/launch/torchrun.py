"""Starting a run's process group: torchrun's elastic agent, and what a failed group leaves behind.

Hydra's torchrun launcher plugin was never published, so the Hydra job runs torchrun itself, in the launcher's
process: ``torch.distributed.run`` parses the same command line ``torchrun ... -m nanogpt_runner.train.worker
RUN_DIR`` would, and its elastic agent starts, watches and restarts the ranks from here, running
``worker.run_rank(RUN_DIR)`` in each. In-process rather than as a ``torchrun`` child because the launcher
imports torch anyway: a second interpreter importing it again cost seconds of every group's start-up.

Importing torch is most of a rank's start-up (seconds, and ``torch._dynamo`` as long again, which
DistributedDataParallel's and fully_shard's constructors import). So the ranks fork from a rank server,
multiprocessing's forkserver: a fresh, single-threaded interpreter that imports all of that once,
started as soon as the launcher has composed the config and knows it needs a group, so its imports run
beside the launcher's own (a process with threads or a used OpenMP pool, like the launcher, must not be
forked; one that has only imported can be). A sweep's later groups fork from the same server at once.
A rank forked from it inherits its environment and working directory, so a group started after either
changed in the launcher (another job's ``hydra.job.env_set``, a test's monkeypatch) is spawned fresh.

The workers read the resolved config from the run directory, never from Hydra (which would make one output
dir per rank). One node meets at a store of this process that listens on loopback only, on a fresh free port
each time, so sweep jobs never collide (launch.loopback_rendezvous: torch's own ``--standalone`` listens on every
interface); several nodes meet at a c10d rendezvous on ``parallel.rdzv_endpoint``.

Stop signals: the ranks run in their own sessions, so this process alone hears SIGINT/SIGTERM/SIGHUP/SIGUSR2
(a terminal, or its closing, SLURM's warning before the time limit, a requeue). While the group runs, the
agent's handlers hold them: it forwards the signal to every rank once, whose loop saves a checkpoint at the
next step boundary and stops, and gives them ``parallel.timeout_min`` to do so. Afterwards this process's own
handlers are back, and SIGTERM or SIGUSR2 does what it would have done to it (submitit's requeue handler,
or the default: end the process). Under SLURM every process of the job step gets the signal: the rank server
ignores it (rank_server), the ranks stop at a step boundary, and this process waits until every rank is gone
(``wait_for_ranks``) before the signal ends it or requeues the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import multiprocessing.forkserver
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from nanogpt_runner.config.schema import threads_per_rank
from nanogpt_runner.fsutil import open_nofollow, open_regular
from nanogpt_runner.runs.rundir import LOG_FILE, RANKS_LOCK_FILE, RunWriter, read_run
from nanogpt_runner.train.signals import LATE_SIGNALS, StopSignals

# The agent forwards each of these to the ranks: the stop signals end in a checkpoint (StopSignals).
HANDLED_SIGNALS = ("SIGQUIT", *(sig.name for sig in StopSignals.SIGNALS))
LOOPBACK_BACKEND = "nanogpt-loopback"  # the one-node rendezvous backend (launch.loopback_rendezvous)


# What the rank server imports: its own set-up, then what every rank imports before it trains, whatever its
# layout (once, there, rather than in each rank).
RANK_SERVER_PRELOAD = ("nanogpt_runner.launch.rank_server", "nanogpt_runner.train.worker", "torch._dynamo")
_rank_server_started_in: tuple[dict[str, str], str] | None = None  # (environment, working directory)

# torchrun options newer than the oldest torch the runner installs on (2.9), and what is lost without them.
NEWER_OPTIONS = {
    "--shutdown-timeout": "March 2026: after a stop signal the ranks get torchrun's fixed 30 s to checkpoint, "
                          "not parallel.timeout_min",
}


def torchrun_args(par, run_dir: Path, known_options: set[str] | None = None) -> list[str]:
    """The torchrun command line (without ``torchrun`` itself) that starts ``par``'s group on this node,
    with those of NEWER_OPTIONS in ``known_options`` (all by default)."""
    newer = {"--shutdown-timeout": 60 * par.timeout_min}
    known = NEWER_OPTIONS.keys() if known_options is None else known_options
    args = [f"--nproc-per-node={par.nproc_per_node}", f"--nnodes={par.nnodes}", f"--max-restarts={par.max_restarts}",
            "--monitor-interval=0.5", f"--signals-to-handle={','.join(sorted(HANDLED_SIGNALS))}",
            *(f"{option}={value}" for option, value in newer.items() if option in known)]
    # One node: a store of this process on a free loopback port (launch.loopback_rendezvous), and a fresh id.
    if par.nnodes == 1:
        args += [f"--rdzv-backend={LOOPBACK_BACKEND}", f"--rdzv-id={uuid.uuid4()}"]
    else:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={par.rdzv_endpoint}", f"--rdzv-id={par.rdzv_id}"]
    return args + ["-m", "nanogpt_runner.train.worker", str(run_dir)]


def start_rank_server() -> None:
    """Start the rank server, which imports RANK_SERVER_PRELOAD while this process goes on (see above).

    ``__main__`` is preloaded too: a rank forked from the server then finds the launcher's main module
    already imported, rather than importing it again as multiprocessing otherwise does."""
    global _rank_server_started_in
    if _rank_server_started_in is None:
        multiprocessing.set_forkserver_preload(["__main__", *RANK_SERVER_PRELOAD])
        with _safe_path():
            multiprocessing.forkserver.ensure_running()
        _rank_server_started_in = (dict(os.environ), os.getcwd())


@contextlib.contextmanager
def _safe_path():
    """PYTHONSAFEPATH=1 (``python -P``) for the Python processes started meanwhile: the server is ``python -c``,
    which would put the working directory first on sys.path, so a ``nanogpt_runner/`` folder planted there
    would be imported instead of the package. Its ranks inherit the setting; this process's environment
    is as it was after."""
    saved = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONSAFEPATH")
        else:
            os.environ["PYTHONSAFEPATH"] = saved


def in_rank_server(function, *args):
    """``function(*args)`` in a process forked from the rank server (started now if it was not); its result, or
    its exception, returned here. For work whose CUDA context and cached blocks must not stay in this process,
    which then hosts the torchrun agent or trains itself: train.plan=auto's timings on a GPU."""
    import concurrent.futures

    start_rank_server()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return pool.submit(function, *args).result()


def rank_start_method() -> str:
    """``forkserver`` when ranks forked from the rank server (started now if it was not) would inherit this
    process's environment and working directory; ``spawn`` (fresh interpreters) when either changed."""
    start_rank_server()
    return "forkserver" if _rank_server_started_in == (dict(os.environ), os.getcwd()) else "spawn"


def known_newer_options(parser) -> set[str]:
    """Those of NEWER_OPTIONS that this torch's torchrun parser accepts (an older one refuses the command)."""
    return {option for option in NEWER_OPTIONS if not parser.parse_known_args([f"{option}=1", "script"])[1]}


def run_group(par, run_dir: Path) -> int:
    """Run the process group to its end; returns its exit code after recording a failure in run.json."""
    start_method = rank_start_method()
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    from nanogpt_runner.launch import loopback_rendezvous
    from nanogpt_runner.train.worker import run_rank

    loopback_rendezvous.register(LOOPBACK_BACKEND)
    parser = get_args_parser()
    known = known_newer_options(parser)
    for option in NEWER_OPTIONS.keys() - known:
        print(f"warning: torch {torch.__version__}'s torchrun has no {option} (from {NEWER_OPTIONS[option]}.",
              file=sys.stderr)
    args = parser.parse_args(torchrun_args(par, run_dir, known))
    args.start_method = start_method
    received = None
    # The agent's log folder (its ranks' error files), removed after: left to torch, it is a torchelastic_*
    # temporary folder per group that nothing removes.
    with _agent_scope(OMP_NUM_THREADS=str(threads_per_rank(par)), PYTHONSAFEPATH="1"), \
            tempfile.TemporaryDirectory(prefix="nanogpt-agent-") as agent_logs:
        args.log_dir = agent_logs
        try:
            config, _command, _ = config_from_args(args)
            elastic_launch(config, entrypoint=run_rank)(*args.training_script_args, os.getpid())
            code = 0
        except ChildFailedError:  # a rank failed (restarts used up): torchrun's own exit code
            code = 1
        except SignalException as stopped:  # the ranks were told, and checkpointed or were given up on
            received = stopped.sigval
            code = 128 + received
    later = wait_for_ranks(run_dir, 60 * par.timeout_min)
    received = received or later
    code = record_group_failure(run_dir, code or (128 + later if later else 0))
    if received in (signal.SIGTERM, signal.SIGUSR2):
        signal.raise_signal(received)  # now that the ranks have checkpointed: what the signal meant for us
    return code  # after Ctrl-C: the exit code, and run.json says interrupted


def wait_for_ranks(run_dir: Path, timeout_s: float) -> int | None:
    """Wait, up to ``timeout_s``, until no rank of the group lives; the first stop signal that came meanwhile.

    The agent returns as soon as it sees its ranks fail, which is not when they are gone: a rank may still be
    saving its checkpoint, and under submitit this process's end is the requeue, after which SLURM kills what is
    left of the job. Each rank holds RANKS_LOCK_FILE shared while it lives (train.worker.hold_while_alive), so
    this process waits for the exclusive lock. A stop signal meanwhile is held, not acted on, and returned."""
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # (handlers can only be set there)
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in LATE_SIGNALS} \
        if main else {}
    try:
        with open_nofollow(run_dir / RANKS_LOCK_FILE, "a") as lock:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
    except OSError:  # a planted symlink, or a filesystem without flock: nothing to wait on
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return held[0] if held else None


@contextlib.contextmanager
def _agent_scope(**env: str):
    """The ranks' environment set; this process's signal handlers, environment and name as they were after.

    The agent installs its own handlers for HANDLED_SIGNALS, writes to ``os.environ`` (which the workers
    inherit) and renames the thread that runs it (for the main thread: the process's name in ps and top);
    a sweep runs many groups from one process, and must get its own handlers back."""
    import torch.multiprocessing

    thread_name = torch.multiprocessing._get_thread_name()
    names = [*env, "TORCHELASTIC_SIGNALS_TO_HANDLE"]
    saved_env = {name: os.environ.get(name) for name in names}
    saved_handlers = {sig: signal.getsignal(sig) for sig in (getattr(signal, name) for name in HANDLED_SIGNALS)}
    os.environ.update(env)
    try:
        yield
    finally:
        torch.multiprocessing._set_thread_name(thread_name)
        for sig, handler in saved_handlers.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread: the agent installed none
                signal.signal(sig, handler)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    if record.get("status") == "interrupted":  # stopped by a signal after a checkpoint: rank 0 said so
        return code
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
        f = open_regular(path)  # a rank log that is a symlink is not read
        if f is None:
            continue
        with f:
            text = f.read().decode("utf-8", errors="replace")
        start = text.rfind("Traceback (most recent call last)")
        if start >= 0:
            traces[rank] = text[start:].strip()
    return traces


def hidden_gpus_problem(cfg, env: dict | None = None, gpus_present: bool | None = None) -> str | None:
    """Why a submitit_local job would silently train on the CPU, or None.

    submitit's local executor sets CUDA_VISIBLE_DEVICES to the first ``gpus_per_node`` GPUs, which Hydra's
    submitit_local leaves unset (0): the job sees no GPU, and train.device=auto would pick the CPU."""
    env = os.environ if env is None else env
    if env.get("SUBMITIT_EXECUTOR") != "local" or env.get("CUDA_VISIBLE_DEVICES") != "" or cfg.train.device != "auto":
        return None
    if gpus_present is None:
        gpus_present = any(Path("/proc/driver/nvidia/gpus").glob("*"))
    if not gpus_present:
        return None
    return (f"hydra/launcher=submitit_local hides this machine's GPUs from its jobs unless "
            f"hydra.launcher.gpus_per_node is set, so train.device=auto would train on the CPU: add "
            f"hydra.launcher.gpus_per_node={cfg.parallel.nproc_per_node}, or train.device=cpu to use the CPU.")


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
