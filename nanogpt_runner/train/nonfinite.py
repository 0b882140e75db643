"""What a NaN or infinite loss does to a run: stop it (``NonFiniteLoss``), or skip the update."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from nanogpt_runner.errors import NonFiniteLoss


class NonFiniteGuard:
    """Watches each update's loss and gradient norm for NaN or infinity, without stopping the device for it.

    ``policy="stop"``: each step folds its finiteness into a small device tensor (the first non-finite
    step and its values), and ``check()`` reads it where the loop reads the host anyway: a metrics line,
    an evaluation, and before every checkpoint (the Checkpointer calls it). A non-finite update is applied
    like any other, so the run stops at the next check, up to ``train.log_interval - 1`` steps after the bad
    one, raising NonFiniteLoss that names the first bad step; nothing after it is ever saved, so the last
    checkpoint (``last_good``, when there is one) is the last good state. The ranks agree at the check
    (``agree``: each number's maximum over the ranks), so they all stop together.

    ``policy="skip_step"``: a bad update must not be applied, so the decision is read on the host every
    step (one device-to-host copy per step, and the replicas' mean loss through ``replicas_mean``, a
    collective, so every rank decides alike: the price of skipping). The update is dropped and counted.

    Either way a ``nan`` event names the step and values. With fp16 loss scaling an infinite gradient norm
    is the scaler's business (it skips the step and lowers the scale), so only the loss is checked then.
    The stop message suggests only a precision other than ``precision``, the one in use."""

    def __init__(self, policy: str, writer, scaler_enabled: bool = False, skipped: int = 0,
                 replicas_mean: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
                 agree: Callable[[list[float]], list[float]] = lambda values: values, precision: str = "fp32",
                 last_good: Callable[[], Path | None] = lambda: None):
        self.policy, self.writer, self.scaler_enabled, self.skipped = policy, writer, scaler_enabled, skipped
        self._replicas_mean, self._agree = replicas_mean, agree
        self.precision, self._last_good = precision, last_good
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
        raise NonFiniteLoss(f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm}); "
                            f"{self._advice()}")

    def _advice(self) -> str:
        """Where the last good state is, and the fixes that apply to this run."""
        saved = self._last_good()
        state = (f"{saved} holds the last good state" if saved is not None
                 else "no checkpoint was saved before it")
        other_precisions = {"fp16": "bf16 or fp32", "bf16": "fp32"}.get(self.precision)
        fixes = ["lower optimizer.lr", *([f"use train.precision={other_precisions}"] if other_precisions else []),
                 "set train.nan_policy=skip_step to skip such updates"]
        return f"{state}. {', '.join(fixes[:-1]).capitalize()} or {fixes[-1]}"

    def _report(self, step: int, loss: float, grad_norm: float, action: str) -> None:
        if self.writer is not None:
            self.writer.event("nan", step=step, loss=loss, grad_norm=grad_norm, action=action)
