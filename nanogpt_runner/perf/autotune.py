"""Timing a few training steps of this model, the measurement behind ``precision=auto`` and the plan.

No fixed rule picks the fastest precision everywhere: bf16 autocast is 2x faster than fp32 for the 10.6M
model on a CPU with AMX and slower for the 0.8M baby model on the same CPU (its casts and small kernels cost
more than its matmuls save), and 100x slower on a CPU that emulates it. So ``precision=auto`` times a few
steps of this model at this micro-batch in each precision the device runs natively (the matmul peak is used
only to skip an emulated dtype, ``hardware.precision_candidates``) and keeps the fastest, when it beats the
device's usual choice (fp32 on a CPU, bf16 on a GPU) by more than timing noise. Results are
cached per (device, threads, model shape, micro-batch, torch version) in ``<data cache>/autotune.json``.

Candidates are timed in interleaved windows (``interleaved``: A B A B A B, each its median of ROUNDS
windows), never one after the other: on a busy machine one reading per candidate ranked fp32 at 1,454 ms
against bf16 at 1,070 ms per step for a model whose quiet figures are the other way round.

A timed step is the loop's own: ``Parallelized.forward_backward`` per micro-step, clipping, the optimizer,
on random tokens (speed depends on shapes, not on the text), in a forked RNG so that timing never changes
what the run itself draws.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanogpt_runner.config.schema import Config, DeviceCaps, with_changes
from nanogpt_runner.distributed import parallelize as parallel
from nanogpt_runner.distributed import process_group
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.perf import hardware
from nanogpt_runner.runs.rundir import write_json_atomic

CACHE_FILE = "autotune.json"
PROBE_SECONDS = 2.0  # per candidate precision, at most, over its ROUNDS windows (plus a warm-up step each)
# Short timings of settings that are really equal differ by a few percent (up to 3% on a quiet 2-core CPU),
# and a plan that followed such noise trained 14% slower than the config as given: a challenger replaces
# the incumbent (the config as given, the device's usual precision) only when this much faster.
SWITCH_MARGIN = 1.05
GPU_TIMING_GROUP = 5  # steps queued back to back between two synchronisations when timing on a GPU
ROUNDS = 3  # timing windows per candidate, taken in turn with the other candidates'


def clearly_faster(step_ms: float, than_ms: float) -> bool:
    """Whether a step of ``step_ms`` beats one of ``than_ms`` by more than timing noise (SWITCH_MARGIN)."""
    return step_ms * SWITCH_MARGIN < than_ms


@dataclass(frozen=True)
class Setting:
    """One way to compute the same training step: the fields a plan may change, never the math."""

    precision: str
    attention: str
    compile: bool
    recompute: bool
    batch_size: int
    grad_accum: int

    @classmethod
    def of(cls, cfg, precision: str | None = None) -> Setting:
        return cls(precision or cfg.train.precision, cfg.model.attention, bool(cfg.train.compile), cfg.train.recompute,
                   cfg.train.batch_size, cfg.train.grad_accum)

    def overrides(self) -> list[str]:
        """As command-line overrides (what the plan prints and records)."""
        return [f"train.precision={self.precision}", f"model.attention={self.attention}",
                f"train.compile={str(self.compile).lower()}", f"train.recompute={str(self.recompute).lower()}",
                f"train.batch_size={self.batch_size}", f"train.grad_accum={self.grad_accum}"]

    def apply(self, cfg):
        """A copy of ``cfg`` computing with this setting."""
        return with_changes(cfg, model={"attention": self.attention},
                            train={name: getattr(self, name)
                                   for name in ("precision", "compile", "recompute", "batch_size", "grad_accum")})


@dataclass
class StepTiming:
    step_ms: float  # median wall time of one optimizer step (all its micro-steps)
    steps: int  # timed steps behind the median
    peak_bytes: float  # measured memory of the step above what was in use before the model was built
    first_step_ms: float | None = None  # the first step alone, synchronised: with a compile, it holds the compile


def time_steps(cfg, vocab_size: int, device: torch.device, setting: Setting, seconds: float,
               min_steps: int = 2, max_steps: int = 20) -> StepTiming:
    """Build the model as ``setting`` says and time whole training steps (after warm-up) until ``seconds``
    have passed, at least ``min_steps``.

    Steps run back to back as in the run, timed in groups with one synchronisation each (GPU_TIMING_GROUP
    on a GPU): there the host queues the next step's kernels while the device computes this one, and a
    step timed alone, synchronised, adds the two. On an H200 that ranked bf16 ahead of fp32 (11.9 against
    13.2 ms) for a model whose run then trained 31% faster in fp32."""
    cfg = setting.apply(cfg)
    with _private_rng(device):
        gc_collect(device)
        baseline = _memory_now(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        hardware.configure_matmul(device, setting.precision, cfg.train.tf32)  # fp32 on TF32 cores, as the run would
        model = GPT(cfg.model, vocab_size).to(device)
        par = parallel.parallelize(model, process_group.Layout(device=device), cfg, setting.precision)
        optimizers = build_optimizers(model, cfg.optimizer)
        scaler = torch.amp.GradScaler(device.type, enabled=setting.precision == "fp16")
        autocast = hardware.autocast(device.type, setting.precision)
        shape = (setting.batch_size, cfg.model.block_size)
        x = torch.randint(0, vocab_size, shape, device=device)
        y = torch.randint(0, vocab_size, shape, device=device)
        peak = _PeakAfterForward(model, device, baseline)
        grad_clip = cfg.train.grad_clip  # read once, as the run's loop does

        def step() -> None:
            for micro in range(setting.grad_accum):
                par.forward_backward(x, y, 1 / setting.grad_accum, micro == setting.grad_accum - 1, autocast, scaler)
            par.finish_gradients()
            optimizers.unscale_(scaler)
            par.clip_grad_norm(grad_clip)
            optimizers.step(scaler)
            scaler.update()
            optimizers.zero_grad()

        group = GPU_TIMING_GROUP if device.type == "cuda" else 1
        first = time.perf_counter()
        step()  # warm-up: allocations, kernel selection, the optimizer's state, a compile
        hardware.synchronize(device)
        first_step_ms = 1000 * (time.perf_counter() - first)
        for _ in range(group - 1):
            step()
        hardware.synchronize(device)
        times: list[float] = []  # seconds per step, one entry per group
        timed, start = 0, time.perf_counter()
        while timed < max_steps and (timed < min_steps or time.perf_counter() - start < seconds):
            t0 = time.perf_counter()
            for _ in range(group):
                step()
            hardware.synchronize(device)
            times.append((time.perf_counter() - t0) / group)
            timed += group
        peak_bytes = peak.result()
        peak.remove()
    return StepTiming(1000 * statistics.median(times), timed, peak_bytes, first_step_ms)


def interleaved(windows: list[Callable[[float], StepTiming]], seconds: float,
                rounds: int = ROUNDS) -> list[StepTiming | Exception]:
    """Time each candidate (``windows[i](seconds)`` times it for that long) in ``rounds`` windows of
    ``seconds / rounds``, the candidates in turn, and keep each one's median window: a burst of load from
    elsewhere then falls on one window of one candidate and is outvoted, instead of deciding the ranking.
    A candidate that fails (out of memory, an unsupported kernel) is not timed again; its error is its result."""
    timings: list[list[StepTiming]] = [[] for _ in windows]
    failed: dict[int, Exception] = {}
    for _ in range(rounds):
        for i, window in enumerate(windows):
            if i not in failed:
                try:
                    timings[i].append(window(seconds / rounds))
                except (RuntimeError, torch.OutOfMemoryError) as err:
                    failed[i] = err
    return [failed[i] if i in failed else _combined(timings[i]) for i in range(len(windows))]


def _combined(windows: list[StepTiming]) -> StepTiming:
    """One candidate's windows as one timing: the median step, the highest peak, the slowest first step (the
    cold one, which holds a compile)."""
    firsts = [t.first_step_ms for t in windows if t.first_step_ms is not None]
    return StepTiming(statistics.median(t.step_ms for t in windows), sum(t.steps for t in windows),
                      max(t.peak_bytes for t in windows), max(firsts) if firsts else None)


class _PeakAfterForward:
    """The step's memory: the allocator's peak on a GPU; on a CPU the resident set sampled at the end of each
    forward pass (where saved activations are largest) plus the gradients that the backward pass adds."""

    def __init__(self, model: torch.nn.Module, device: torch.device, baseline: float):
        self.device, self.baseline, self.model, self.sampled = device, baseline, model, 0.0
        self._hook = model.register_forward_hook(self._sample) if device.type != "cuda" else None

    def _sample(self, *_args) -> None:
        if self.model.training:
            self.sampled = max(self.sampled, _memory_now(self.device))

    def result(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        gradients = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return max(self.sampled - self.baseline + gradients, 0.0)

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()


def _memory_now(device: torch.device) -> float:
    return hardware.memory_gb(device)[0] * 1e9


def gc_collect(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _private_rng(device: torch.device):
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        yield


def cache_key(cfg, vocab_size: int, device: torch.device, what: str) -> str:
    """What a measurement depends on: the device and its threads, the model's shape, the torch version."""
    m = cfg.model
    shape = f"L{m.n_layer} H{m.n_head} C{m.n_embd} T{m.block_size} V{vocab_size} bias{int(m.bias)} " \
            f"drop{m.dropout:g}"
    return f"{what}|{hardware.describe(device)}|{shape}|torch {torch.__version__}"


def read_cache(cache_dir: Path) -> dict:
    try:
        cache = json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(cache_dir: Path, key: str, value: dict) -> None:
    cache = read_cache(cache_dir)
    cache[key] = value
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_dir / CACHE_FILE, cache)


@dataclass
class PrecisionProbe:
    """What ``precision=auto`` decided and why: each candidate's measured step time, or why it was skipped."""

    choice: str
    step_ms: dict[str, float]
    skipped: dict[str, str]
    cached: bool = False

    def describe(self) -> str:
        times = ", ".join(f"{p} {ms:.1f} ms/step" for p, ms in sorted(self.step_ms.items(), key=lambda kv: kv[1]))
        why = f"{times}, {'cached' if self.cached else 'measured'}" if times else "the only candidate"
        skipped = "".join(f"; {p} skipped: {reason}" for p, reason in self.skipped.items())
        return f"precision=auto chose {self.choice} ({why}){skipped}"

    def as_record(self) -> dict:
        return asdict(self)


def probe_precision(cfg, vocab_size: int, device: torch.device, candidates: list[str], skipped: dict[str, str],
                    cache_dir: Path, measure: Callable[..., StepTiming] = time_steps) -> PrecisionProbe:
    """The fastest of ``candidates`` for one training step of this model at this micro-batch, measured once per
    (device, threads, shape, micro-batch) and cached. Eager mode: a compile would cost more than the probe."""
    if len(candidates) == 1:
        return PrecisionProbe(candidates[0], {}, skipped)
    t = cfg.train
    key = cache_key(cfg, vocab_size, device, f"precision {','.join(candidates)}") + \
        f"|micro {t.batch_size}|{cfg.model.attention}|recompute {int(t.recompute)}"
    if (hit := read_cache(cache_dir).get(key)) is not None:
        return PrecisionProbe(hit["choice"], hit["step_ms"], skipped, cached=True)
    step_ms, skipped = {}, dict(skipped)
    settings = [Setting(p, cfg.model.attention, False, t.recompute, t.batch_size, 1) for p in candidates]
    results = interleaved([lambda seconds, s=s: measure(cfg, vocab_size, device, s, seconds) for s in settings],
                          PROBE_SECONDS)
    for precision, result in zip(candidates, results, strict=True):
        if isinstance(result, Exception):  # e.g. the whole model does not fit one GPU
            skipped[precision] = f"the probe failed ({type(result).__name__}: {str(result).splitlines()[0][:120]})"
        else:
            step_ms[precision] = round(result.step_ms, 3)
    if not step_ms:  # nothing could be timed: the device's usual first choice, not cached
        return PrecisionProbe(candidates[0], {}, skipped)
    usual, fastest = next(iter(step_ms)), min(step_ms, key=step_ms.get)  # usual: the device's first choice
    choice = fastest if clearly_faster(step_ms[fastest], step_ms[usual]) else usual
    write_cache(cache_dir, key, {"choice": choice, "step_ms": step_ms})
    return PrecisionProbe(choice, step_ms, skipped)


def resolve_precision(cfg: Config, vocab_size: int, device: torch.device, caps: DeviceCaps,
                      cache_dir: Path) -> tuple[str, PrecisionProbe | None]:
    """``train.precision`` as this run will train: an explicit one as given; ``auto`` by probing (the probe is
    returned for the console and run.json)."""
    probes: list[PrecisionProbe] = []

    def choose(candidates: list[str], skipped: dict[str, str]) -> str:
        probes.append(probe_precision(cfg, vocab_size, device, candidates, skipped, cache_dir))
        return probes[-1].choice

    precision = hardware.resolve_precision(cfg.train.precision, device, caps, cache_dir, choose)
    return precision, probes[0] if probes else None
