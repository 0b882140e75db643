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

    ``agree`` turns this process's flag into the group's decision (an all-reduce of the flag, so every
    rank stops at the same step); without it the flag is local and read at every poll. The group is asked
    only every ``every``-th poll (a collective is a device sync on a GPU): every rank polls at the same
    steps, so all still agree, at most ``every - 1`` steps after the signal."""

    # SIGUSR2: SLURM's warning before the time limit (the slurm_torchrun preset asks for it signal_delay_s
    # ahead), forwarded to every rank by torchrun (nanogpt_runner.torchrun); it ends in a checkpoint too.
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self, agree: Callable[[bool], bool] | None = None, every: int = 1):
        self.received: int | None = None
        self._agree, self._every, self._polls = agree, max(every, 1), 0
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
        if self._agree is None:
            return flag
        self._polls += 1
        return self._agree(flag) if (self._polls - 1) % self._every == 0 else False

    @property
    def signum(self) -> int:
        return self.received if self.received is not None else signal.SIGTERM


class NonFiniteGuard:
    """Watches each update's loss and gradient norm for NaN or infinity, without stopping the device for it.

    ``policy="stop"``: each step folds its finiteness into a small device tensor (the first non-finite
    step and its values), and ``check()`` reads it where the loop reads the host anyway: a metrics line,
    an evaluation, and before every checkpoint (the Checkpointer calls it). A non-finite update is applied
    like any other, so the run stops at the next check, up to ``train.log_interval - 1`` steps after the bad
    one, raising NonFiniteLoss that names the first bad step; nothing after it is ever saved, so the last
    checkpoint is the last good state. The ranks agree at the check (``agree``: each number's maximum
    over the ranks), so they all stop together.

    ``policy="skip_step"``: a bad update must not be applied, so the decision is read on the host every
    step (one device-to-host copy per step, and the replicas' mean loss through ``replicas_mean``, a
    collective, so every rank decides alike: the price of skipping). The update is dropped and counted.

    Either way a ``nan`` event names the step and values. With fp16 loss scaling an infinite gradient norm
    is the scaler's business (it skips the step and lowers the scale), so only the loss is checked then."""

    def __init__(self, policy: str, writer, scaler_enabled: bool = False, skipped: int = 0,
                 replicas_mean: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
                 agree: Callable[[list[float]], list[float]] = lambda values: values):
        self.policy, self.writer, self.scaler_enabled, self.skipped = policy, writer, scaler_enabled, skipped
        self._replicas_mean, self._agree = replicas_mean, agree
        self._window_skipped = 0
        self._first_bad: torch.Tensor | None = None  # (step, loss, grad norm); step 0 while every update was finite

    def window_mean(self, loss_sum: float, window_steps: int) -> float:
        """Mean loss of a log window over the updates that were applied (skipped ones add nothing to the
        sum); NaN when every update in it was skipped. Starts the next window."""
        applied, self._window_skipped = window_steps - self._window_skipped, 0
        return loss_sum / applied if applied > 0 else math.nan

    def _values(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.stack([loss.detach().reshape(()), grad_norm.detach().reshape(())]).double()
        finite = torch.isfinite(values)
        return values, ~finite[0] | (~finite[1] & (not self.scaler_enabled))

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Record update ``step``; True when it must not be applied (policy ``skip_step`` only)."""
        if self.policy == "skip_step":
            values, bad = self._values(self._replicas_mean(loss), grad_norm)
            if not bad.item():
                return False
            self._report(step, *values.tolist(), action="skipped")
            self.skipped += 1
            self._window_skipped += 1
            return True
        values, bad = self._values(loss, grad_norm)
        record = torch.cat([torch.full((1,), float(step), dtype=torch.float64, device=values.device), values])
        if self._first_bad is None:
            self._first_bad = torch.zeros_like(record)
        self._first_bad = torch.where(bad & (self._first_bad[0] == 0), record, self._first_bad)
        return False

    def check(self) -> None:
        """Under policy ``stop``: raise NonFiniteLoss when an update since the start was not finite (reads
        the device once; call it on every rank at the same steps)."""
        if self._first_bad is None:
            return
        local_step, loss, grad_norm = self._first_bad.tolist()
        [earliest] = self._agree([-local_step if local_step else -math.inf])  # the earliest bad step of any rank
        if earliest == -math.inf:
            return
        step = int(-earliest)
        if local_step != step:  # another rank's loss was the bad one
            what, loss, grad_norm = "loss on another rank", math.nan, math.nan
        else:
            what = "loss" if not math.isfinite(loss) else "gradient norm"
        self._report(step, loss, grad_norm, action="stopped")
        raise NonFiniteLoss(
            f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm}); the last checkpoint holds the "
            f"last good state. Lower optimizer.lr, use train.precision=bf16 or fp32, or set "
            f"train.nan_policy=skip_step to skip such updates")

    def _report(self, step: int, loss: float, grad_norm: float, action: str) -> None:
        if self.writer is not None:
            self.writer.event("nan", step=step, loss=loss, grad_norm=grad_norm, action=action)
