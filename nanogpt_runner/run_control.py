"""How a run ends early, and how the loop notices: the run-ending exceptions, stop signals, the
non-finite guard.

Every way a run can stop before completing is a ``RunStopped`` with the status run.json records and the
process's exit code; the worker turns it into one line on the console. ``StopSignals`` turns SIGTERM and
SIGINT into a request the loop polls between steps (so the last completed step is saved first), and
``NonFiniteGuard`` decides what a NaN or infinite loss does (stop, or skip the update).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import torch


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



class StopSignals:
    """SIGTERM, SIGINT and SIGUSR2 become a request the loop polls at step boundaries, so the run can save
    the last completed step and stop cleanly. A second SIGINT stops at once (KeyboardInterrupt).

    ``agree`` turns this process's flag into the group's decision (e.g. an all-reduce of the flag, so
    every rank stops at the same step); without it the flag is local."""

    # SIGUSR2: SLURM's warning before the time limit (the slurm_torchrun preset asks for it signal_delay_s
    # ahead), forwarded to every rank by torchrun (nanogpt_runner.torchrun); it ends in a checkpoint too.
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self, agree: Callable[[bool], bool] | None = None):
        self.received: int | None = None
        self._agree = agree
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> bool:
        """Poll at a step boundary: True when the run should save and stop now."""
        flag = self.received is not None
        return self._agree(flag) if self._agree is not None else flag

    @property
    def signum(self) -> int:
        return self.received if self.received is not None else signal.SIGTERM


class NonFiniteGuard:
    """Checks each update's loss and gradient norm before the optimizer applies it.

    ``policy="stop"`` raises NonFiniteLoss (nothing is saved: the last checkpoint is the last good
    state); ``"skip_step"`` drops the update and counts it. Either way a ``nan`` event names the step and
    values. With fp16 loss scaling an infinite gradient norm is the scaler's business (it skips the step
    and lowers the scale), so only the loss is checked then."""

    def __init__(self, policy: str, writer, scaler_enabled: bool = False, skipped: int = 0):
        self.policy, self.writer, self.scaler_enabled, self.skipped = policy, writer, scaler_enabled, skipped
        self._window_skipped = 0

    def window_mean(self, loss_sum: float, window_steps: int) -> float:
        """Mean loss of a log window over the updates that were applied (skipped ones add nothing to the
        sum); NaN when every update in it was skipped. Starts the next window."""
        applied, self._window_skipped = window_steps - self._window_skipped, 0
        return loss_sum / applied if applied > 0 else math.nan

    def skip(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """True when this update must not be applied; raises under policy ``stop``."""
        values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        finite = torch.isfinite(values).tolist()
        if finite[0] and (finite[1] or self.scaler_enabled):
            return False
        loss_value, norm_value = values.tolist()
        action = "stopped" if self.policy == "stop" else "skipped"
        if self.writer is not None:
            self.writer.event("nan", step=step, loss=loss_value, grad_norm=norm_value, action=action)
        if self.policy == "stop":
            raise NonFiniteLoss(
                f"non-finite {'loss' if not finite[0] else 'gradient norm'} at step {step} (loss {loss_value}, "
                f"grad norm {norm_value}); the last checkpoint holds the last good state. Lower optimizer.lr, use "
                f"train.precision=bf16 or fp32, or set train.nan_policy=skip_step to skip such updates")
        self.skipped += 1
        self._window_skipped += 1
        return True
