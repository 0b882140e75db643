"""``nanogpt-plan [--estimate-only] OVERRIDES`` (or ``python -m nanogpt_runner.cli.plan``): the fastest way to
train here.

The plan never changes the math: the global batch, the learning rate, the schedule and the data stay the
same, so the loss curve is the same run's. What it may change is how each step is computed:

- precision (``train.precision=auto`` only: fp32 and bf16 where the device runs it natively; the search
  starts from the precision ``auto``'s probe picks, so a plan cut short never trains slower than ``auto``),
- attention (``sdpa`` or explicit ``math``; which wins depends on the machine and the dtype),
- the split of each rank's batch into micro-batch x accumulation (``batch_size`` x ``grad_accum``),
- CPU threads per rank (``parallel.threads_per_rank``),
- recomputation, tried only when nothing fits without it (it saves memory and always costs time),
- compile, tried only when the budget leaves room for its expected first-step compilation
  (``compile_decision.expected_compile_seconds``: measured on this machine, or a prior). With ``train.compile``
  null on a GPU the plan decides it from numbers instead (``compile_decision``): it times a compiled
  candidate when the run is long enough that compiling could pay and the budget affords its compile, and
  compiles when the run's steps repay the compile time with margin.

First it prints the memory estimate (``--estimate-only`` stops there). Then it times candidates one
dimension at a time from the config as given (a coordinate search: every dimension's alternatives are
timed with the best of the others so far, in interleaved windows with the best so far timed again beside
them, ``autotune.interleaved``; one replaces the best so far only when faster by more than timing noise,
``autotune.SWITCH_MARGIN``), within ``plan.budget_s`` seconds but never more than
``PLAN_SHARE`` of the run it plans (judged from the config as given, always timed first: on a fast GPU a
2,000-step baby run takes 13 s), and drops those whose memory estimate exceeds the device's memory. The
table shows each candidate's tokens/s, estimated and measured memory, and the winner. Plans are cached per
(device, threads, model shape, batch, budget, run length) in ``<data cache>/autotune.json``;
``train.plan=auto`` runs the plan (or reads it) and trains with the winner, and run.json records both.
With several ranks the plan times one rank's share (its threads, its micro-batch) in one process; it
does not compare layouts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.table import Table

from nanogpt_runner.config.schema import Config, threads_per_rank
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.perf import autotune, compile_decision, hardware, memory
from nanogpt_runner.perf.autotune import Setting, StepTiming
from nanogpt_runner.perf.compile_decision import CompileDecision

PLAN_SHARE = 0.05  # of the planned run's training time, the most a plan spends timing candidates
MEASURED, OVER_MEMORY, OVER_BUDGET = "measured", "over memory", "over budget"
# The config's train.compile=true, kept without a timing: a plan never turns off a setting it did not time.
KEPT = "kept (not timed)"
# train.compile null on a GPU: compile chosen by the estimate (compile_decision) without a timed compiled step.
ESTIMATED = "estimated (not timed)"


@dataclass
class Candidate:
    setting: Setting
    threads: int
    estimate_bytes: float
    status: str = OVER_BUDGET
    step_ms: float | None = None
    tok_per_s: float | None = None
    measured_bytes: float | None = None
    error: str | None = None
    first_step_ms: float | None = None  # the cold first step: with compile, it holds the compile

    def as_record(self) -> dict:
        return {**dataclasses.asdict(self), "setting": self.overrides()}

    def overrides(self) -> list[str]:
        return [*self.setting.overrides(), f"parallel.threads_per_rank={self.threads}"]

    def describe(self) -> str:
        s = self.setting
        extras = [name for name, on in (("recompute", s.recompute), ("compile", s.compile)) if on]
        return ", ".join([s.precision, s.attention, f"{s.batch_size} x {s.grad_accum}", f"{self.threads} thr", *extras])


@dataclass
class Plan:
    candidates: list[Candidate]
    winner: int  # index into candidates
    budget_s: float
    spent_s: float
    cached: bool = False
    notes: list[str] = field(default_factory=list)
    compile_decision: dict | None = None  # train.compile null on a GPU: CompileDecision.as_record()

    @property
    def best(self) -> Candidate:
        return self.candidates[self.winner]

    def as_record(self) -> dict:
        """run.json's ``plan``: the winner's overrides, every candidate, the time it took."""
        return {"winner": self.best.overrides(), "tok_per_s": self.best.tok_per_s, "budget_s": self.budget_s,
                "spent_s": round(self.spent_s, 2), "cached": self.cached, "notes": self.notes,
                "candidates": [c.as_record() for c in self.candidates], "compile_decision": self.compile_decision}

    @classmethod
    def from_record(cls, record: dict) -> Plan:
        candidates = [Candidate(**{**c, "setting": _setting_from_overrides(c["setting"])})
                      for c in record["candidates"]]
        winner = next(i for i, c in enumerate(candidates) if c.overrides() == record["winner"])
        return cls(candidates, winner, record["budget_s"], record["spent_s"], True, record["notes"],
                   record.get("compile_decision"))

    def apply(self, cfg):
        """``cfg`` computing as the winner does (the same config otherwise)."""
        out = self.best.setting.apply(cfg)
        out.parallel.threads_per_rank = self.best.threads
        return out


def _setting_from_overrides(overrides: list[str]) -> Setting:
    values = dict(o.split("=", 1) for o in overrides)
    return Setting(values["train.precision"], values["model.attention"], values["train.compile"] == "true",
                   values["train.recompute"] == "true", int(values["train.batch_size"]),
                   int(values["train.grad_accum"]))


def batch_splits(cfg) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) splits of the same per-rank batch: the config's own, and accumulation 1, 2, 4,
    ... while it divides the batch (a pipeline needs a micro-batch its ``parallel.microbatches`` divide)."""
    t = cfg.train
    total = t.batch_size * t.grad_accum
    divisor = cfg.parallel.microbatches if cfg.parallel.pp > 1 else 1
    accums = {t.grad_accum} | {2**i for i in range(total.bit_length()) if total % 2**i == 0}
    return [(total // k, k) for k in sorted(accums) if (total // k) % divisor == 0]


def make_plan(cfg: Config, vocab_size: int, device: torch.device, available: float, say=print,
              measure=autotune.time_steps) -> Plan:
    """Time candidate settings (coordinate search from the config as given) within ``plan.budget_s``, cut to
    PLAN_SHARE of the run once the first candidate's speed says how long the run will take."""
    budget = cfg.plan.budget_s
    started = time.perf_counter()
    caps = hardware.device_caps(cfg.train.device, device)
    precisions, notes = [cfg.train.precision], []
    if cfg.train.precision == "auto":  # start from what precision=auto would train with (its probe, cached)
        cache = autotune_cache(cfg)
        precisions, skipped = hardware.precision_candidates(device, caps, cache)
        probe = autotune.probe_precision(cfg, vocab_size, device, precisions, skipped, cache, measure)
        precisions = [probe.choice, *(p for p in precisions if p != probe.choice)]
        notes.append(probe.describe())
    # The ranks of a CPU machine share its RAM; on GPUs each rank has its own device, which ``available`` is.
    ranks_sharing = cfg.parallel.nproc_per_node if device.type == "cpu" else 1
    tried: dict[tuple, Candidate] = {}

    def candidate(setting: Setting, threads: int) -> Candidate:
        key = (setting, threads)
        if key not in tried:
            est = memory.estimate(setting.apply(cfg), vocab_size, device.type).total
            over = ranks_sharing * est > available
            tried[key] = Candidate(setting, threads, est, OVER_MEMORY if over else OVER_BUDGET)
        return tried[key]

    def time_together(candidates: list[Candidate], seconds: float, rounds: int = autotune.ROUNDS) -> None:
        """Time the candidates in interleaved windows; one that cannot run is dropped, not fatal."""
        for c in candidates:
            say(f"plan: timing {' '.join(c.overrides())}")

        def window(c: Candidate, window_s: float) -> StepTiming:
            with _threads(c.threads):
                return measure(cfg, vocab_size, device, c.setting, window_s)

        results = autotune.interleaved([lambda window_s, c=c: window(c, window_s) for c in candidates], seconds,
                                       rounds)
        for c, result in zip(candidates, results, strict=True):
            if isinstance(result, Exception):
                c.status, c.error = "failed", f"{type(result).__name__}: {str(result).splitlines()[0][:200]}"
                continue
            c.status, c.step_ms, c.measured_bytes = MEASURED, result.step_ms, result.peak_bytes
            c.first_step_ms = result.first_step_ms
            c.tok_per_s = 1000 * c.setting.batch_size * c.setting.grad_accum * cfg.model.block_size / result.step_ms

    def compile_seconds(c: Candidate) -> float:
        """A cold compile of this candidate's model: measured on this machine, or the prior."""
        return compile_decision.expected_compile_seconds(c.setting.apply(cfg), vocab_size, device,
                                                         c.setting.precision, autotune_cache(cfg))[0]

    def run(options: list[Candidate], incumbent: Candidate) -> None:
        """Time the options not measured yet, with the incumbent timed again beside them (the comparison is
        then made under the same load), within the budget left. The very first candidate is timed alone,
        whatever the budget: its speed says how long the run is, and so what the plan may spend."""
        nonlocal budget
        pending = [c for c in options if c.status == OVER_BUDGET and c.step_ms is None]
        if pending and not any(other.status == MEASURED for other in tried.values()):
            first, pending = pending[0], pending[1:]
            time_together([first], min(max((budget - (time.perf_counter() - started)) / 8, 0.2), 2.0))
            if first.status == MEASURED and PLAN_SHARE * (
                    run_s := training_seconds(cfg, vocab_size, first.step_ms)) < budget:
                budget = PLAN_SHARE * run_s
                notes.append(f"budget cut to {budget:.2g} s: {PLAN_SHARE:.0%} of this run's {run_s:.0f} s of "
                             f"training")
        left = budget - (time.perf_counter() - started)
        pending = [c for c in pending if left > 0 and not (c.setting.compile and left < compile_seconds(c))]
        if pending:
            again = [incumbent] if incumbent.status == MEASURED and incumbent not in pending else []
            time_together(pending + again, min(max(left / 8, 0.2), 2.0))

    def best_of(options: list[Candidate], incumbent: Candidate) -> Candidate:
        """The fastest of ``options``, if clearly faster than the incumbent (which near-ties keep)."""
        run(options, incumbent)
        measured = [c for c in options if c.status == MEASURED]
        if not measured:
            return incumbent
        fastest = max(measured, key=lambda c: c.tok_per_s)  # every candidate trains the same tokens per step
        if incumbent.status == MEASURED and not autotune.clearly_faster(fastest.step_ms, incumbent.step_ms):
            return incumbent
        return fastest

    threads = threads_per_rank(cfg.parallel)
    # Searched without compile (every candidate would pay a cold compile); compile is its own, last, dimension.
    base = dataclasses.replace(Setting.of(cfg, precisions[0]), compile=False)
    splits = batch_splits(cfg)
    # Recomputation only when nothing fits without it: it never makes a step faster.
    recompute = cfg.train.recompute or all(
        candidate(dataclasses.replace(base, batch_size=b, grad_accum=k), threads).status == OVER_MEMORY
        for b, k in splits)
    if recompute and not cfg.train.recompute:
        notes.append("recomputation on: no split of the batch fits in memory without it")
    # Start from the config's own split, or from the largest micro-batch that fits when it does not.
    starts = [candidate(dataclasses.replace(base, recompute=recompute, batch_size=b, grad_accum=k), threads)
              for b, k in splits]
    own = candidate(dataclasses.replace(base, recompute=recompute), threads)
    best = own if own.status != OVER_MEMORY else next((c for c in starts if c.status != OVER_MEMORY), own)
    dimensions = [
        lambda s, n: [(dataclasses.replace(s, precision=p), n) for p in precisions],
        lambda s, n: [(dataclasses.replace(s, attention=a), n) for a in ("sdpa", "math")],
        lambda s, n: [(dataclasses.replace(s, batch_size=b, grad_accum=k), n) for b, k in splits],
        lambda s, n: [(s, k) for k in sorted({threads, max(threads // 2, 1)}, reverse=True)] if device.type == "cpu"
        else [(s, n)],
    ]
    # train.compile null on a GPU: compile is decided from its estimated cost and savings, after the search.
    by_estimate = cfg.train.compile is None and device.type == "cuda"
    if not by_estimate:
        dimensions.append(lambda s, n: [(dataclasses.replace(s, compile=c), n) for c in (False, True)])
    for alternatives in dimensions:
        best = best_of([candidate(s, n) for s, n in alternatives(best.setting, best.threads)], best)
    if best.status != MEASURED:
        raise PlanError(_nothing_fits(cfg, vocab_size, device, available, tried))
    compiled = candidate(dataclasses.replace(best.setting, compile=True), best.threads)
    decision = None
    if by_estimate:
        best, decision = _compile_by_estimate(cfg, vocab_size, device, best, compiled,
                                              budget - (time.perf_counter() - started), time_together, notes)
    elif cfg.train.compile and not best.setting.compile and compiled.status == OVER_BUDGET:
        compiled.status, best = KEPT, compiled
        notes.append(f"compile kept from the config: not timed (a cold compile is expected to take "
                     f"{compile_seconds(compiled):.0f} s, more than the budget left)")
    candidates = list(tried.values())
    return Plan(candidates, candidates.index(best), budget, time.perf_counter() - started, notes=notes,
                compile_decision=decision and decision.as_record())


def _compile_by_estimate(cfg, vocab_size: int, device: torch.device, eager: Candidate, compiled: Candidate,
                         left_s: float, time_together, notes: list[str]) -> tuple[Candidate, CompileDecision]:
    """``train.compile`` null on a GPU: time the compiled candidate (one window, its compile inside the plan's
    budget) when the run is long enough that compiling could pay and the budget left affords the expected
    compile; then decide from the numbers (``compile_decision.decide``). (The winner, the decision.)"""
    cache = autotune_cache(cfg)
    precision = eager.setting.precision
    compile_s, compile_from = compile_decision.expected_compile_seconds(
        eager.setting.apply(cfg), vocab_size, device, precision, cache)
    steps = compile_decision.run_steps(cfg.train, _tokens_per_step(cfg), _flops_per_token(cfg, vocab_size),
                                       eager.step_ms)
    window_s = min(max(left_s / 8, 0.2), 2.0)
    if not compile_decision.could_pay(steps, compile_s, eager.step_ms):
        notes.append(f"compile not timed: {steps:,} steps could not repay a {compile_s:.0f} s compile "
                     f"[{compile_from}] even at {compile_decision.COMPILED_STEP_BEST_CASE:g} x the eager step")
    elif left_s < compile_s + window_s:
        notes.append(f"compile not timed: the {max(left_s, 0):.1f} s left of plan.budget_s cannot afford a "
                     f"{compile_s:.0f} s compile [{compile_from}]; decided from the prior compiled step")
    else:
        time_together([compiled], window_s, rounds=1)
        if compiled.status != MEASURED:
            notes.append(f"compile off: the compiled candidate failed ({compiled.error})")
            return eager, CompileDecision(False, f"the compiled candidate failed: {compiled.error}")
        if compiled.first_step_ms is not None:
            compile_s, compile_from = max(compiled.first_step_ms - eager.step_ms, 0.0) / 1000, "measured by this plan"
            compile_decision.remember_compile_seconds(eager.setting.apply(cfg), vocab_size, device, precision, cache,
                                                      compile_s)
    decision = compile_decision.decide(steps, compile_s, compile_from, eager.step_ms, "timed by this plan",
                                       compiled.step_ms if compiled.status == MEASURED else None)
    notes.append(decision.describe())
    if decision.compile and compiled.status != MEASURED:
        compiled.status = ESTIMATED
    return (compiled if decision.compile else eager), decision


def training_seconds(cfg, vocab_size: int, step_ms: float) -> float:
    """How long the run trains at ``step_ms`` per step: its planned steps (max_iters, max_tokens, max_flops),
    or its time budget when that ends it sooner."""
    return compile_decision.run_steps(cfg.train, _tokens_per_step(cfg), _flops_per_token(cfg, vocab_size),
                                      step_ms) * step_ms / 1000


def _tokens_per_step(cfg) -> int:
    """One rank's tokens per optimizer step (what the plan times)."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size


def _flops_per_token(cfg, vocab_size: int) -> float:
    """Only a FLOP budget needs FLOPs per token: from a model on the meta device (no memory, but a first one
    costs 1.6 s of imports, so only then)."""
    if cfg.train.max_flops is None:
        return 0.0
    with torch.device("meta"):
        return GPT(cfg.model, vocab_size).flops_per_token()


class PlanError(Exception):
    """No candidate could be measured: nothing fits in memory, or every candidate failed."""


def _nothing_fits(cfg, vocab_size, device, available, tried) -> str:
    failed = [c.error for c in tried.values() if c.error]
    if failed:
        return f"no candidate setting could train: {failed[0]}"
    smallest = min(tried.values(), key=lambda c: c.estimate_bytes)
    return (f"nothing fits: the smallest candidate ({' '.join(smallest.overrides())}) needs about "
            f"{smallest.estimate_bytes / memory.GB:.2f} GB per rank, {'RAM' if device.type == 'cpu' else 'GPU'} "
            f"available {available / memory.GB:.2f} GB; use a smaller model or shard it (parallel=fsdp, tp or pp).")


class _threads:
    """Run a candidate with ``n`` CPU threads, then restore the process's setting."""

    def __init__(self, n: int):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def autotune_cache(cfg):
    from nanogpt_runner.data.prepared import cache_dir

    return cache_dir(cfg.data)


def plan_key(cfg, vocab_size: int, device: torch.device) -> str:
    t, par = cfg.train, cfg.parallel
    return autotune.cache_key(cfg, vocab_size, device, "plan") + (
        f"|batch {t.batch_size * t.grad_accum}|precision {t.precision}|recompute {int(t.recompute)}"
        f"|threads {threads_per_rank(cfg.parallel)}|ranks {par.nproc_per_node}|pp {par.pp}x{par.microbatches}"
        f"|budget {cfg.plan.budget_s:g}|run {t.max_iters} {t.max_tokens} {t.max_flops} {t.max_time_s}")


def cached_plan(cfg, vocab_size: int, device: torch.device, available: float, say=print) -> Plan:
    """The plan for this config on this machine: read from the cache, or made and cached."""
    cache = autotune_cache(cfg)
    key = plan_key(cfg, vocab_size, device)
    if (record := autotune.read_cache(cache).get(key)) is not None:
        try:
            return Plan.from_record(record)
        except (KeyError, TypeError, ValueError, StopIteration):
            say("plan: the cached plan is unreadable; planning again")
    plan = make_plan(cfg, vocab_size, device, available, say)
    autotune.write_cache(cache, key, plan.as_record())
    return plan


def plan_device(kind: str) -> torch.device:
    return torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")


def available_memory(cfg) -> float:
    return hardware.available_memory(hardware.device_kind(cfg.train.device))


def plan_run(cfg: Config, vocab_size: int, elsewhere=None) -> tuple[object, Plan | None, list[str]]:
    """``train.plan=auto`` before a run: (the config computing as the winner, the plan, problems). The table
    goes to the console; nothing that fits is a problem that refuses the run. On a GPU the timings run through
    ``elsewhere(function, *args)`` (the launcher's: a child process, so their CUDA context and cached blocks
    end with it instead of staying beside rank 0 for the whole run)."""
    device = plan_device(hardware.device_kind(cfg.train.device))
    run = elsewhere if elsewhere is not None and device.type == "cuda" else (lambda function, *args: function(*args))
    try:
        plan = run(cached_plan, cfg, vocab_size, device, available_memory(cfg))
    except PlanError as err:
        return cfg, None, [str(err)]
    Console(highlight=False).print(plan_table(plan))
    return plan.apply(cfg), plan, []


def plan_table(plan: Plan) -> Table:
    title = (f"plan: {len(plan.candidates)} candidates, {plan.spent_s:.1f} s of plan.budget_s={plan.budget_s:g}"
             + (" (cached)" if plan.cached else ""))
    table = Table(title=title, title_justify="left", caption="\n".join(f"note: {note}" for note in plan.notes) or None,
                  caption_justify="left")
    table.add_column("candidate")
    for column in ("tokens/s", "est. memory", "measured"):
        table.add_column(column, justify="right")
    table.add_column("chosen")
    for i, c in enumerate(plan.candidates):
        table.add_row(c.describe(), f"{c.tok_per_s:,.0f}" if c.tok_per_s else c.error or c.status,
                      memory.size(c.estimate_bytes),
                      memory.size(c.measured_bytes) if c.measured_bytes is not None else "",
                      "<- chosen" if i == plan.winner else "")
    return table


def estimate_table(est: memory.MemoryEstimate, available: float, device_kind: str) -> Table:
    table = Table(title=f"memory estimate: {est.precision}, {est.where}", title_justify="left")
    table.add_column("part")
    table.add_column("memory", justify="right")
    for name, value in est.parts().items():
        table.add_row(name, memory.size(value))
    table.add_row(f"available ({'RAM' if device_kind == 'cpu' else 'GPU'})", memory.size(available))
    return table
