"""How a run ends early: every way it can stop before completing is a ``RunStopped`` with the status run.json
records and the process's exit code. At the ground floor because the launcher, the checkpoint readers and the
loop all raise or catch them (no torch)."""

from __future__ import annotations

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


class Interrupted(RunStopped):
    """SIGTERM, SIGINT or SIGUSR2 arrived; the last completed step was checkpointed."""

    status = "interrupted"

    def __init__(self, signum: int, step: int, saved: Path | None):
        name = signal.Signals(signum).name
        where = f"checkpoint {saved}" if saved else "no new checkpoint (nothing trained since the last one)"
        super().__init__(f"stopped by {name} after step {step}; {where}; resume with train.resume=auto "
                         f"(same run dir) or resume=RUN_DIR")
        self.exit_code = 128 + signum
        self.step = step


class NonFiniteLoss(RunStopped):
    """The loss or the gradient norm became NaN or infinite under ``train.nan_policy=stop``."""
