"""How a run ends early: every way it can stop before completing is a ``RunStopped`` with the status run.json
records and the process's exit code. At the ground floor because the launcher, the checkpoint readers and the
loop all raise or catch them (no torch)."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path


class RunStopped(Exception):
    """A run that ends before completing, for a reason the user can act on: recorded as ``status`` in
    run.json, reported in one line (the message), and the process exits with ``exit_code``."""

    status = "failed"
    exit_code = 1


class CheckpointError(RunStopped):
    """A checkpoint cannot be used (missing, damaged, or incompatible with the config): the message
    names the checkpoint, the problem and the fix."""

    exit_code = 2


def how_to_continue(run_dir: Path, checkpoint: Path | None) -> str:
    """The exact command that continues a stopped run from ``checkpoint`` (its run dir when the checkpoint is
    in it, else the checkpoint itself: a run resumed from another that saved nothing yet), or, without one,
    that there is nothing to continue: a message never names a checkpoint that does not exist."""
    if checkpoint is None:
        return "no checkpoint was saved, so there is nothing to resume: run the same command again to start over"
    target = run_dir if Path(checkpoint).resolve().is_relative_to(Path(run_dir).resolve()) else checkpoint
    return f"continue with: nanogpt-run resume={shlex.quote(str(target))}"


class Interrupted(RunStopped):
    """SIGTERM, SIGINT, SIGHUP or SIGUSR2 arrived; the last completed step was checkpointed (when anything was
    trained since the last checkpoint)."""

    status = "interrupted"

    def __init__(self, signum: int, step: int, saved: Path | None, last_good: Path | None, run_dir: Path):
        name = signal.Signals(signum).name
        if saved is not None:
            where = f"checkpoint {saved}"
        elif last_good is not None:
            where = f"no new checkpoint (nothing trained since {last_good})"
        else:
            where = "nothing trained yet"
        super().__init__(f"stopped by {name} after step {step}; {where}; {how_to_continue(run_dir, last_good)}")
        self.exit_code = 128 + signum
        self.step = step


class NonFiniteLoss(RunStopped):
    """The loss or the gradient norm became NaN or infinite under ``train.nan_policy=stop``."""
