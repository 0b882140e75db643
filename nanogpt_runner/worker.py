"""One run's process: train, and turn every way a run can end into its status in run.json.

The Hydra job runs this in-process for a single-process run, and as ``python -m nanogpt_runner.worker
RUN_DIR`` for sweep jobs, where the config comes from RUN_DIR/config.yaml, never from Hydra again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from nanogpt_runner.config import Config
from nanogpt_runner.console import error
from nanogpt_runner.data import DataError, PreparedData, load_prepared
from nanogpt_runner.fsutil import overwrite_json
from nanogpt_runner.process_group import NullWriter, env_rank
from nanogpt_runner.run_control import RunStopped
from nanogpt_runner.runs import CONFIG_FILE, LOG_FILE, RUN_FILE, RunWriter, read_run
from nanogpt_runner.train import train


def execute(cfg: Config, run_dir: Path, data: PreparedData) -> int:
    """Train and record the outcome; returns the process exit code (0 only for a completed run)."""
    # Under torchrun only rank 0 writes run.json and metrics.jsonl; the others log to rank{N}.log.
    rank = env_rank()
    writer = RunWriter(run_dir) if rank == 0 else NullWriter()
    log_file = run_dir / (LOG_FILE if rank == 0 else f"rank{rank}.log")
    try:
        summary = train(cfg, run_dir, data, writer)
    except KeyboardInterrupt:
        return _end(writer, 130, f"interrupted; the run directory is {run_dir}", status="interrupted",
                    error="interrupted by the user (SIGINT)")
    except RunStopped as err:  # a signal, a non-finite loss, an unusable checkpoint: status and exit code say which
        return _end(writer, err.exit_code, str(err), status=err.status, error=str(err))
    except DataError as err:
        return _end(writer, 1, str(err), status="failed", error=str(err))
    except Exception as err:  # any other failure is recorded with its traceback, then reported in one line
        trace = traceback.format_exc()
        try:
            with open(log_file, "a", encoding="utf-8") as log:
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
            fields["error"] = fields["error"].strip().splitlines()[-1]
        try:
            overwrite_json(writer.run_dir / RUN_FILE, {**writer.record, **fields})
        except OSError:
            code = code or 1
            note = f"run.json could not be updated ({err.strerror or err}); it may still say it is running"
            message = f"{message}; {note}" if message else f"the run completed, but {note}"
    if message:
        error(message)
    return code


def load_run_config(run_dir: Path):
    """The resolved config a launcher saved in the run directory, checked against the schema."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_dir / CONFIG_FILE))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_the_launcher() -> None:
    """Ask the kernel for SIGTERM when the launcher that started this process dies, however it dies.

    A rank leads its own session (a terminal's Ctrl+C and the viewer's Stop reach it only through the
    launcher), so a launcher killed outright (SIGKILL, the OOM killer) would leave it training on, an orphan
    nothing stops. SIGTERM is handled as any stop: every rank saves the last completed step and ends
    ``interrupted``. Linux only; elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    stop_with_the_launcher()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / CONFIG_FILE).exists():
        error("usage: python -m nanogpt_runner.worker RUN_DIR (a run directory made by nanogpt-run)")
        sys.exit(2)
    run_dir = Path(args[0])
    record = read_run(run_dir) or {}
    data = load_prepared(Path(record["dataset"]["dir"]))
    sys.exit(execute(load_run_config(run_dir), run_dir, data))


if __name__ == "__main__":
    main()
