"""Whether a CUDA run compiles when ``train.compile`` is null: decided from numbers, not from a step count.

A compile costs a run its first steps (tens of seconds, once per process) and saves a share of every later
step. It pays when ``steps x (eager step - compiled step)`` repays the compile time REPAY_MARGIN times over
(the margin covers the estimates' error: none of the priors below has been measured on a GPU). Each number
comes from the best source there is, and the decision (run.json's ``compile_decision``, or the plan's) names
which:

- compile seconds: measured on this machine for this model shape, precision, attention and recomputation
  (a compiled run's first metrics window less as many of its steady steps, or the plan's first compiled
  step less an eager one), cached in ``<data cache>/autotune.json``; before any measurement the prior
  COMPILE_PRIOR_BASE_S + COMPILE_PRIOR_PER_BLOCK_S per block, meant to be on the long side;
- the eager step: the plan's timed winner (``train.plan=auto``), else ``precision=auto``'s probe (one micro-
  batch, times the accumulation), else the step's FLOPs at EAGER_MFU_PRIOR of the devices' peak (a high MFU,
  so a short step and small savings);
- the compiled step: the plan's timed compiled candidate, else the eager step x COMPILED_STEP_PRIOR.

A CPU run never compiles by default (a cold compile takes 20-30 s there and rarely pays); ``true`` and
``false`` decide without any of this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanogpt_runner.config.schema import planned_steps
from nanogpt_runner.perf import autotune

COMPILE_PRIOR_BASE_S = 20.0  # a cold compile before any measurement: 20-30 s for the small models on a CPU
COMPILE_PRIOR_PER_BLOCK_S = 2.0  # plus this per block (12 blocks of GPT-2 124M: 44 s in all)
COMPILED_STEP_PRIOR = 0.8  # compiled / eager step when the compiled step was not timed: "saves a fifth"
COMPILED_STEP_BEST_CASE = 0.5  # the plan times a compiled candidate only if a step this much shorter would pay
EAGER_MFU_PRIOR = 0.5  # an eager step's MFU when no eager step was timed (small models run far below it)
REPAY_MARGIN = 2.0  # the savings must be this many times the compile time


@dataclass
class CompileDecision:
    """What was decided and from which numbers (seconds, milliseconds per optimizer step, and their sources)."""

    compile: bool
    reason: str
    steps: int | None = None
    compile_s: float | None = None
    compile_s_from: str | None = None
    eager_step_ms: float | None = None
    eager_step_from: str | None = None
    compiled_step_ms: float | None = None
    compiled_step_from: str | None = None
    saves_s: float | None = None
    margin: float = REPAY_MARGIN

    def describe(self) -> str:
        """The console line: the verdict and the arithmetic behind it."""
        if self.saves_s is None:
            return f"compile {'on' if self.compile else 'off'}: {self.reason}"
        return (f"compile {'on' if self.compile else 'off'}: {self.steps:,} steps x ({self.eager_step_ms:.2f} ms "
                f"eager [{self.eager_step_from}] - {self.compiled_step_ms:.2f} ms compiled "
                f"[{self.compiled_step_from}]) save about {self.saves_s:,.0f} s, "
                f"{'at least' if self.compile else 'less than'} {self.margin:g} x the {self.compile_s:.0f} s of "
                f"compile [{self.compile_s_from}]")

    def as_record(self) -> dict:
        return {name: round(value, 3) if isinstance(value, float) else value
                for name, value in asdict(self).items()}


def decide(steps: int, compile_s: float, compile_from: str, eager_ms: float, eager_from: str,
           compiled_ms: float | None = None) -> CompileDecision:
    """Compile when the steps' savings repay the compile REPAY_MARGIN times; an untimed compiled step is the
    eager one x COMPILED_STEP_PRIOR."""
    compiled_from = "timed" if compiled_ms is not None else f"prior: {COMPILED_STEP_PRIOR:g} x eager"
    compiled_ms = eager_ms * COMPILED_STEP_PRIOR if compiled_ms is None else compiled_ms
    saves_s = steps * max(eager_ms - compiled_ms, 0.0) / 1000
    pays = saves_s >= REPAY_MARGIN * compile_s
    return CompileDecision(pays, "the savings repay the compile" if pays else "the savings do not repay the compile",
                           steps, compile_s, compile_from, eager_ms, eager_from, compiled_ms, compiled_from, saves_s)


def could_pay(steps: int, compile_s: float, eager_ms: float) -> bool:
    """Whether compiling could pay at all: with a step COMPILED_STEP_BEST_CASE as long (the plan times a compiled
    candidate only then)."""
    return steps * eager_ms * (1 - COMPILED_STEP_BEST_CASE) / 1000 >= REPAY_MARGIN * compile_s


def run_steps(t, tokens_per_step: int, flops_per_token: float, step_ms: float) -> int:
    """The optimizer steps the run takes at ``step_ms`` per step: its planned steps (max_iters, max_tokens,
    max_flops), fewer when its time budget ends it sooner. A resumed run is counted whole."""
    steps, _ = planned_steps(t, tokens_per_step, flops_per_token)
    if t.max_time_s is not None:
        steps = min(steps, max(int(t.max_time_s * 1000 / step_ms), 1))
    return steps


def prior_compile_seconds(n_layer: int) -> float:
    return COMPILE_PRIOR_BASE_S + COMPILE_PRIOR_PER_BLOCK_S * n_layer


def compile_key(cfg, vocab_size: int, device: torch.device, precision: str) -> str:
    """What a compile's time depends on: the device, the model's shape, the torch version, and what changes the
    compiled graphs (precision, attention, recomputation), not the batch."""
    return autotune.cache_key(cfg, vocab_size, device, "compile seconds") + (
        f"|{precision}|{cfg.model.attention}|recompute {int(cfg.train.recompute)}")


def expected_compile_seconds(cfg, vocab_size: int, device: torch.device, precision: str,
                             cache_dir: Path) -> tuple[float, str]:
    """(seconds, where they come from): the last measurement on this machine, else the prior."""
    hit = autotune.read_cache(cache_dir).get(compile_key(cfg, vocab_size, device, precision))
    seconds = hit.get("seconds") if isinstance(hit, dict) else None
    if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
        return float(seconds), "measured on this machine"
    return prior_compile_seconds(cfg.model.n_layer), (
        f"prior: {COMPILE_PRIOR_BASE_S:g} s + {COMPILE_PRIOR_PER_BLOCK_S:g} s per block")


def remember_compile_seconds(cfg, vocab_size: int, device: torch.device, precision: str, cache_dir: Path,
                             seconds: float) -> None:
    autotune.write_cache(cache_dir, compile_key(cfg, vocab_size, device, precision), {"seconds": round(seconds, 2)})


def decide_for_run(cfg, vocab_size: int, device: torch.device, precision: str, cache_dir: Path,
                   probe_step_ms: dict[str, float] | None, flops_per_token: float, tokens_per_step: int,
                   peak_flops: float) -> CompileDecision:
    """A run's decision for ``train.compile`` null, without a plan: never on a CPU; on a GPU from the cached or
    prior compile time, the probe's eager step (or the FLOPs prior, ``peak_flops`` being all the devices') and
    the prior compiled step."""
    if device.type != "cuda":
        return CompileDecision(False, "a CPU run never compiles by default (train.compile=true does)")
    compile_s, compile_from = expected_compile_seconds(cfg, vocab_size, device, precision, cache_dir)
    if probe_step_ms and precision in probe_step_ms:
        eager_ms, eager_from = probe_step_ms[precision] * cfg.train.grad_accum, "precision probe"
    else:
        eager_ms = 1000 * flops_per_token * tokens_per_step / (peak_flops * EAGER_MFU_PRIOR)
        eager_from = f"prior: the step's FLOPs at {EAGER_MFU_PRIOR:.0%} MFU"
    steps = run_steps(cfg.train, tokens_per_step, flops_per_token, eager_ms)
    return decide(steps, compile_s, compile_from, eager_ms, eager_from)


class CompileClock:
    """A compiled run measures its own compile: its first metrics window less as many steady steps (timed by the
    second window). The first window also holds CUDA's first-use costs, which an eager run pays too, so the
    figure errs long; the step-0 evaluation's compile (forward only) is not in it."""

    def __init__(self):
        self.first: tuple[float, int] | None = None
        self.done = False

    def window(self, elapsed_s: float, steps: int) -> float | None:
        """Feed each metrics window; the compile seconds once, at the second window."""
        if self.done or steps <= 0:
            return None
        if self.first is None:
            self.first = (elapsed_s, steps)
            return None
        self.done = True
        first_s, first_steps = self.first
        return max(first_s - first_steps * elapsed_s / steps, 0.0)
