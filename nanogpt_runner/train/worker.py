"""One run's process: train, and turn every way a run can end into its status in run.json.

The Hydra job runs this in-process for a single-process run, as ``python -m nanogpt_runner.train.worker RUN_DIR``
for single-process sweep jobs, and as ``run_rank(RUN_DIR)`` in each rank of a torchrun group; the latter
two read the config from RUN_DIR/config.yaml, never from Hydra again.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from nanogpt_runner.checkpoint.folder import checkpoint_dir, list_checkpoints
from nanogpt_runner.config.saved import load_saved_yaml
from nanogpt_runner.config.schema import Config, to_config
from nanogpt_runner.console import error
from nanogpt_runner.data.prepared import DataError, PreparedData, load_prepared
from nanogpt_runner.distributed.process_group import NullWriter, env_rank
from nanogpt_runner.errors import RunStopped, how_to_continue
from nanogpt_runner.fsutil import open_nofollow, overwrite_json
from nanogpt_runner.runs.rundir import (
    CONFIG_FILE,
    LOG_FILE,
    RANKS_LOCK_FILE,
    RUN_FILE,
    RUN_FILE_RESERVE,
    RunWriter,
    read_run,
)
from nanogpt_runner.train.loop import train
from nanogpt_runner.train.signals import restore_stop_signals, until_the_end_is_recorded


def execute(cfg: Config, run_dir: Path, data: PreparedData) -> int:
    """Train and record the outcome; returns the process exit code (0 only for a completed run). A stop
    signal that comes after the loop cannot cut in between (signals.until_the_end_is_recorded)."""
    with until_the_end_is_recorded():
        return _train_and_record(cfg, run_dir, data)


def _train_and_record(cfg: Config, run_dir: Path, data: PreparedData) -> int:
    # Under torchrun only rank 0 writes run.json and metrics.jsonl; the others log to rank{N}.log.
    rank = env_rank()
    writer = RunWriter(run_dir) if rank == 0 else NullWriter()
    log_file = run_dir / (LOG_FILE if rank == 0 else f"rank{rank}.log")
    try:
        summary = train(cfg, run_dir, data, writer)
    except KeyboardInterrupt:  # a second Ctrl+C: stopped at once, the steps since the last checkpoint unsaved
        saved = list_checkpoints(checkpoint_dir(run_dir))
        return _end(writer, 130, f"interrupted at once (a second Ctrl+C); "
                    f"{how_to_continue(run_dir, saved[-1] if saved else None)}", status="interrupted",
                    error="interrupted by the user (SIGINT)")
    except RunStopped as err:  # a signal, a non-finite loss, an unusable checkpoint: status and exit code say which
        return _end(writer, err.exit_code, str(err), status=err.status, error=str(err))
    except DataError as err:
        return _end(writer, 1, str(err), status="failed", error=str(err))
    except Exception as err:  # any other failure is recorded with its traceback, then reported in one line
        trace = traceback.format_exc()
        try:
            with open_nofollow(log_file, "a") as log:
                log.write(trace)
            where = f"traceback in {log_file}"
        except OSError as log_err:
            where = f"traceback not saved: {log_err.strerror or log_err}"
        return _end(writer, 1, f"training failed{f' on rank {rank}' if rank else ''}: {type(err).__name__}: {err} "
                    f"({where})", status="failed", error=trace)
    finally:
        with contextlib.suppress(OSError):  # every metrics line was flushed when written; nothing is lost
            writer.close()
    return _end(writer, 0, None, status="completed", summary=summary.as_dict())


def _end(writer: RunWriter | NullWriter, code: int, message: str | None, **fields) -> int:
    """Record how the run ended in run.json, report ``message`` in one line, return the exit code.

    A full disk must not turn an ending into a traceback or leave run.json saying "running": when the
    atomic rewrite fails (its temporary file is removed), the record is written again in place, with the
    error cut to its last line: no new file, and usually no new block. If even that fails, the one line
    says so."""
    fields["end_time"] = time.time()
    try:
        writer.update(**fields)
    except OSError as err:
        if isinstance(fields.get("error"), str):
            fields["error"] = fields["error"].strip().splitlines()[-1][:RUN_FILE_RESERVE // 2]  # fits the reserve
        try:
            overwrite_json(writer.run_dir / RUN_FILE, {**writer.record, **fields})
        except OSError:
            code = code or 1
            note = f"run.json could not be updated ({err.strerror or err}); it may still say it is running"
            message = f"{message}; {note}" if message else f"the run completed, but {note}"
    if message:
        error(message)
    return code


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a launcher saved in the run directory, checked against the schema: read as data
    (never through a symlink, never interpolated; config.saved.load_saved_yaml), ValueError naming what is wrong."""
    return to_config(load_saved_yaml(run_dir / CONFIG_FILE))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_the_launcher(launcher: int) -> None:
    """SIGTERM this process when the launcher (process ``launcher``) ends, however it ends.

    A rank leads its own session (a terminal's Ctrl+C and the viewer's Stop reach it only through the
    launcher), so a launcher killed outright (SIGKILL, the OOM killer) would leave it training on, an orphan
    nothing stops. SIGTERM is handled as any stop: every rank saves the last completed step and ends
    ``interrupted``. The launcher is not always the parent (a rank's parent is the rank server, which
    lives as long as its ranks), so rather than the kernel's parent-death signal a thread waits on a pidfd
    of the launcher, or, on a kernel without pidfds (before 5.3, e.g. RHEL 8's), looks every second.
    Linux only; elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        launcher_fd = os.pidfd_open(launcher)
    except ProcessLookupError:  # it ended before this process could watch it
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except OSError:
        launcher_fd = None

    def stop_when_it_ends() -> None:
        if launcher_fd is not None:
            select.select([launcher_fd], [], [])  # readable once the process has ended
        else:
            while not _ended(launcher):
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_it_ends, name="launcher-watch", daemon=True).start()


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def run_rank(run_dir: str, launcher: int) -> None:
    """A torchrun rank (torchrun.run_group's entrypoint): returns when the run completed, exits with its
    code otherwise (torchrun waits for a return value, so a successful rank must not call sys.exit).

    As torchrun starts a command, the rank leads its own session and prints each line as it comes. The
    parent-death signal torch.multiprocessing asks for (SIGINT) is cleared: the parent is the rank server,
    whose end (SLURM signals every process of a job step) says nothing about the run, and a SIGINT after a
    stop signal would end the rank before its checkpoint. The launcher is what the rank watches. A rank forked
    from the rank server inherits its ignored stop signals, and gets the defaults back here."""
    os.setsid()
    restore_stop_signals()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        code = run_in(Path(run_dir), launcher)
    except KeyboardInterrupt:  # before training started; torch.multiprocessing would exit 0 with no result
        code = 128 + signal.SIGINT
    if code:
        sys.exit(code)


_held: list = []  # the open RANKS_LOCK_FILE of this rank, for as long as it lives


def hold_while_alive(run_dir: Path) -> None:
    """Hold RUN_DIR/RANKS_LOCK_FILE shared until this process ends (the kernel lets go however it ends).

    The launcher takes it exclusively once the torchrun agent has returned, so it outlives every rank that
    is still saving a checkpoint (nanogpt_runner.launch.torchrun.wait_for_ranks): under submitit, the launcher's
    end is the requeue, and SLURM kills what is left of the job. Closed on exec, so no compiler child holds it."""
    try:
        handle = open_nofollow(run_dir / RANKS_LOCK_FILE, "a")
        fcntl.flock(handle, fcntl.LOCK_SH)
    except OSError:  # a planted symlink, or a filesystem without flock: the launcher cannot wait, nothing else
        return
    _held.append(handle)


def run_in(run_dir: Path, launcher: int) -> int:
    """Train the run that the launcher (process ``launcher``) prepared in ``run_dir``; the exit code."""
    stop_with_the_launcher(launcher)
    hold_while_alive(run_dir)
    record = read_run(run_dir) or {}
    data = load_prepared(Path(record["dataset"]["dir"]))
    return execute(load_run_config(run_dir), run_dir, data)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / CONFIG_FILE).exists():
        error("usage: python -m nanogpt_runner.train.worker RUN_DIR (a run directory made by nanogpt-run)")
        sys.exit(2)
    try:
        code = run_in(Path(args[0]), os.getppid())
    except ValueError as err:  # a config.yaml that is not what nanogpt-run saved
        error(str(err))
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
