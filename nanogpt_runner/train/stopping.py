"""When a run stops before ``train.max_iters``: budgets, and early stops on the val loss.

Budgets: ``train.max_tokens`` and ``train.max_flops`` become a number of steps before the first one (FLOPs
are tokens x the model's training FLOPs per token), so the learning-rate schedule spans the run the
budget allows. ``train.max_time_s`` cannot be known in steps up front, so with it the schedule follows
the progress fraction max(step / steps, elapsed / max_time_s): the lr reaches min_lr when either runs
out. Time is checked at each metrics line (every ``train.log_interval`` steps) on rank 0's clock, which
every rank receives, so all ranks stop at the same step.

Early stops, decided at each evaluation from the val loss (the same number on every rank: it is
all-reduced): ``train.target_loss`` reached, ``train.early_stop_patience`` evals without a new best, or
divergence (val loss above ``train.divergence_factor`` x the best so far). Every stop ends the run as
completed, with a checkpoint, an ``early_stop`` event line and ``summary.stop_reason`` in run.json.
No torch here: the decisions are plain arithmetic, testable without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from nanogpt_runner.config.schema import planned_steps

# Why a run ended: its step limit, a budget, or an early stop (the config field that caused it).
STOP_REASONS = ("max_iters", "max_tokens", "max_flops", "max_time_s", "target_loss", "early_stop_patience",
                "divergence_factor")



class Stopper:
    """The run's step limit, its time budget and its early stops, for the training loop.

    ``agree`` turns a per-rank number into the one all ranks use (rank 0's, broadcast); it is called
    only when there is a time budget."""

    def __init__(self, t, tokens_per_step: int, flops_per_token: float, best_val: float = math.inf,
                 agree: Callable[[float], float] = lambda value: value):
        self.steps, self.limit = planned_steps(t, tokens_per_step, flops_per_token)
        self.max_time_s, self.target = t.max_time_s, t.target_loss
        self.patience, self.divergence = t.early_stop_patience, t.divergence_factor
        self.agree = agree
        self.best, self.evals_since_best = best_val, 0
        self.time_fraction = 0.0
        self.reason: str | None = None

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    @property
    def stop_reason(self) -> str:
        """Why the run ended: an early stop's reason, else the limit that set its steps."""
        return self.reason or self.limit

    def schedule_step(self, step: int) -> int:
        """The step the lr schedule is evaluated at: ``step``, or further along when time runs out faster."""
        return max(step, int(self.time_fraction * self.steps))

    def after_log(self, elapsed_s: float) -> None:
        """At a metrics line: how much of the time budget is spent; stop when all of it is."""
        if self.max_time_s is None:
            return
        elapsed_s = self.agree(elapsed_s)
        self.time_fraction = elapsed_s / self.max_time_s
        if elapsed_s >= self.max_time_s:
            self.reason = self.reason or "max_time_s"

    def after_eval(self, val_loss: float) -> None:
        """At an evaluation: stop at the target, after ``patience`` evals without a new best, or on divergence."""
        improved = val_loss < self.best
        diverged = self.divergence is not None and math.isfinite(self.best) and (
            not math.isfinite(val_loss) or val_loss > self.divergence * self.best)
        self.best = min(self.best, val_loss) if math.isfinite(val_loss) else self.best
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        if self.reason is not None:
            return
        if self.target is not None and val_loss <= self.target:
            self.reason = "target_loss"
        elif diverged:
            self.reason = "divergence_factor"
        elif self.patience is not None and self.evals_since_best >= self.patience:
            self.reason = "early_stop_patience"

    def describe(self) -> str:
        """The stop in words, for the console and the event line."""
        reason = self.stop_reason
        if reason == "max_time_s":
            return f"the time budget of {self.max_time_s:g} s is spent"
        if reason == "target_loss":
            return f"val loss reached the target {self.target:g}"
        if reason == "early_stop_patience":
            return f"{self.patience} evals without a new best val loss ({self.best:.4f})"
        if reason == "divergence_factor":
            return f"val loss rose above {self.divergence:g} x the best ({self.best:.4f})"
        return f"the {reason} limit ({self.steps} steps)"
