"""One run's process: train, and turn every way a run can end into its status in run.json.

The Hydra job runs this in-process for a single-process run, and as ``python -m nanogpt_runner.worker
RUN_DIR`` for sweep jobs, where the config comes from RUN_DIR/config.yaml, never from Hydra again.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from nanogpt_runner.config import Config
from nanogpt_runner.console import error
from nanogpt_runner.data import DataError, PreparedData, load_prepared
from nanogpt_runner.parallel import NullWriter, env_rank
from nanogpt_runner.run_control import RunStopped
from nanogpt_runner.runs import CONFIG_FILE, LOG_FILE, RunWriter, read_run
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
        writer.update(status="interrupted", end_time=time.time(), error="interrupted by the user (SIGINT)")
        error(f"interrupted; the run directory is {run_dir}")
        return 130
    except RunStopped as err:  # a signal, a non-finite loss, an unusable checkpoint: status and exit code say which
        writer.update(status=err.status, end_time=time.time(), error=str(err))
        error(str(err))
        return err.exit_code
    except DataError as err:
        writer.update(status="failed", end_time=time.time(), error=str(err))
        error(str(err))
        return 1
    except Exception as err:  # any other failure is recorded with its traceback, then reported in one line
        trace = traceback.format_exc()
        writer.update(status="failed", end_time=time.time(), error=trace)
        with open(log_file, "a", encoding="utf-8") as log:
            log.write(trace)
        error(f"training failed{f' on rank {rank}' if rank else ''}: {type(err).__name__}: {err} "
              f"(traceback in {log_file})")
        return 1
    finally:
        writer.close()
    writer.update(status="completed", end_time=time.time(), summary=summary.as_dict())
    return 0


def load_run_config(run_dir: Path):
    """The resolved config a launcher saved in the run directory, checked against the schema."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_dir / CONFIG_FILE))


def main(argv: list[str] | None = None) -> None:
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
