"""Studies: what each technique costs and buys against a baseline, and how loss scales with compute.

A study is a sweep made by ``+study=techniques`` or ``+study=scaling`` (conf/study/, docs/studies.md); every
run carries ``study.kind`` (and ``study.arm`` / ``study.depth``) in its config. This module turns those
runs' own records (run.json, metrics.jsonl, through ``analysis.records.RunRecord``) into a card: numbers,
intervals and one plain sentence each. It imports no torch, no matplotlib and no rich, so the viewer,
``nanogpt-report`` and the end-of-sweep summary all show the same card.

API (all torch-free):

``study_kind(runs) -> str | None``
    "techniques", "scaling" or None: what the runs' configs say they are.
``technique_card(runs, target_loss=None) -> TechniqueCard``
    One ``ArmResult`` per arm against the ``baseline`` arm, paired by seed: ``speed`` (tokens/s ratio),
    ``step_time`` (step-time ratio), ``memory`` (measured peak-memory ratio) beside ``memory_estimate``
    (the estimate's ratio), ``mfu`` (arm and baseline), ``loss_delta`` (val loss difference at equal
    tokens, an ``Interval``) with ``loss_noise`` (the seed-noise floor) and ``loss_verdict``, and
    ``time_to_target`` (ratio of seconds to the card's ``target_loss``: by default the worst baseline seed's
    val loss at equal tokens, so every baseline seed reaches it). An arm that did not run says why in
    ``reason`` (``status`` "unsupported" for one this machine cannot run, "failed", "no baseline").
    ``card.sentences()``, ``card.rows()`` (the CSV), ``card.markdown()``.
``scaling_card(runs) -> ScalingCard``
    Per FLOP budget (``train.max_flops``) an ``IsoFlop`` curve: (params, tokens, final val loss) points,
    the fitted minimum (a parabola in log params) and ``trust`` (why it is not to be trusted: too few
    points, the minimum at an edge). Across budgets ``PowerLaw`` fits of the compute-optimal params,
    tokens and loss against compute (``params_law``, ``tokens_law``, ``loss_law``), each with its own
    ``trust``, and the tokens-per-parameter ratio beside Chinchilla's ~20.
    ``card.sentences()``, ``card.rows()``, ``card.markdown()``.

``Interval`` is a mean with its 95% half-width (Student's t over the paired seeds; NaN with one seed).
A speed ratio counts as a change only when it is outside both that interval and the runs' own measured
speed noise (the range of their tokens/s windows, which a loaded machine widens); a loss difference
only when it is outside both its interval and twice the standard error the baseline's seed spread gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nanogpt_runner.analysis.comparison import speed_noise
from nanogpt_runner.analysis.records import RunRecord, as_number, finite, summarize
from nanogpt_runner.runs.rundir import EVAL, TRAIN

TECHNIQUES, SCALING = "techniques", "scaling"
BASELINE = "baseline"
UNSUPPORTED = "unsupported"  # run.json status of a study arm this machine cannot run (its reason in "error")
# Student's t for a two-sided 95% interval, by degrees of freedom (1..30); above that, the normal 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
NOISE_SIGMAS = 2.0  # a loss difference counts when it is this many seed-noise standard errors away
BUSY_SPEED_NOISE = 0.25  # a median speed noise above this: the card says the machine was busy
CHINCHILLA_TOKENS_PER_PARAM = 20.0
MIN_ISOFLOP_POINTS = 3  # a parabola needs three sizes
MIN_TRUSTED_BUDGETS = 3  # a power law through two points has no error estimate


@dataclass(frozen=True)
class Interval:
    """A mean over paired seeds and its 95% half-width (NaN with one seed)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Interval | None:
        values = [float(v) for v in values if finite(v)]
        if not values:
            return None
        n = len(values)
        if n < 2:
            return cls(values[0], math.nan, 1)
        t = T95[n - 2] if n - 1 <= len(T95) else 1.96
        return cls(float(np.mean(values)), t * float(np.std(values, ddof=1)) / math.sqrt(n), n)

    def text(self, fmt: str = ".2f", suffix: str = "") -> str:
        """"0.78x ± 0.03" (one seed: the value alone)."""
        head = format(self.mean, fmt) + suffix
        return head + (f" ± {format(self.half_width, fmt.lstrip('+'))}" if finite(self.half_width) else "")


def study_kind(runs: list[RunRecord]) -> str | None:
    """What the runs are a study of (the kind most of them name), or None when they are no study."""
    kinds = [r.config.get("study.kind") for r in runs]
    named = [k for k in kinds if k in (TECHNIQUES, SCALING)]
    return max(set(named), key=named.count) if named else None


# ---------------------------------------------------------------------------------------------------
# One run's numbers


@dataclass
class RunNumbers:
    """What a card needs of one run, all from its own records."""

    seed: int | None
    tok_per_s: float | None
    speed_noise: float  # comparison.speed_noise: the relative range of its tokens/s windows
    step_ms: float | None
    peak_mem_gb: float | None
    est_peak_mem_gb: float | None
    mfu: float | None
    global_batch: int | None
    tokens: float | None
    evals: list[tuple[float, float, float]]  # (tokens, val loss, elapsed seconds) per evaluation


def run_numbers(run: RunRecord) -> RunNumbers:
    summary, config = summarize(run), run.config
    train, evals = run.frame(TRAIN), run.frame(EVAL)
    steps = train.step_ms.iloc[1:] if len(train) > 1 else train.step_ms
    steps = steps[np.isfinite(steps)]
    points = [(t, v, e) for t, v, e in zip(evals.tokens, evals.val_loss, evals.elapsed_s, strict=True)
              if finite(t) and finite(v)]
    seed = config.get("train.seed")
    return RunNumbers(
        seed=seed if isinstance(seed, int) else None, tok_per_s=summary["tok_per_s"], speed_noise=speed_noise(run),
        step_ms=float(steps.median()) if len(steps) else None, peak_mem_gb=summary["peak_mem_gb"],
        est_peak_mem_gb=summary["est_peak_mem_gb"], mfu=summary["mfu"], global_batch=global_batch(config),
        tokens=summary["tokens"], evals=points)


def global_batch(config: dict) -> int | None:
    """Sequences per optimizer step: micro-batch x accumulation x data-parallel replicas."""
    numbers = [config.get(k) for k in ("train.batch_size", "train.grad_accum", "parallel.nproc_per_node",
                                       "parallel.nnodes", "parallel.tp", "parallel.pp")]
    if not all(isinstance(n, int) and n > 0 for n in numbers):
        return None
    batch, accum, nproc, nnodes, tp, pp = numbers
    return batch * accum * max(nproc * nnodes // (tp * pp), 1)


def loss_at(numbers: RunNumbers, tokens: float) -> float | None:
    """The val loss of the last evaluation at or before ``tokens``."""
    done = [loss for t, loss, _ in numbers.evals if t <= tokens]
    return done[-1] if done else None


def seconds_to(numbers: RunNumbers, target: float) -> float | None:
    """Seconds from the start to the first evaluation at or below ``target``."""
    return next((e for _, loss, e in numbers.evals if loss <= target and finite(e)), None)


# ---------------------------------------------------------------------------------------------------
# The technique card


@dataclass
class ArmResult:
    """One arm against the baseline, paired by seed (ratios are arm / baseline)."""

    arm: str
    status: str  # "measured", UNSUPPORTED, "failed", "running", "no baseline"
    reason: str = ""
    change: str = ""  # what it changes against the baseline, from the configs ("train.recompute False → True")
    seeds: list[int] = field(default_factory=list)
    speed: Interval | None = None
    speed_noise: float = math.nan  # the ratio's measured noise: the hypot of the paired runs' window ranges
    step_time: Interval | None = None
    step_ms: float | None = None
    memory: Interval | None = None
    memory_estimate: float | None = None
    mfu: float | None = None
    baseline_mfu: float | None = None
    loss_delta: Interval | None = None
    loss_noise: float = math.nan  # NOISE_SIGMAS x the standard error of a difference from the baseline's seeds
    time_to_target: Interval | None = None
    reached_target: str = ""  # "2 of 2 seeds"

    @property
    def speed_verdict(self) -> str:
        """"faster", "slower" or "within noise" (a ratio inside its interval or the speed noise)."""
        if self.speed is None:
            return "unknown"
        margin = max(x for x in (self.speed.half_width, self.speed_noise, 0.0) if finite(x))
        if abs(self.speed.mean - 1.0) <= margin:
            return "within noise"
        return "faster" if self.speed.mean > 1.0 else "slower"

    @property
    def loss_verdict(self) -> str:
        """"unchanged" (within the seed noise and the interval), "better", "worse", or "one seed: cannot tell"."""
        if self.loss_delta is None:
            return "unknown"
        if self.loss_delta.n < 2 or not finite(self.loss_noise):
            return "one seed: cannot tell"
        margin = max(self.loss_delta.half_width, self.loss_noise)
        if abs(self.loss_delta.mean) <= margin:
            return "unchanged"
        return "better" if self.loss_delta.mean < 0 else "worse"

    def sentence(self) -> str:
        """"recompute: 1.00x memory, 0.78x speed, loss unchanged (Δ -0.002 ± 0.011)"."""
        if self.status != "measured":
            return f"{self.arm}: not measured ({self.status}{': ' + self.reason if self.reason else ''})"
        parts = []
        if self.memory is not None:
            parts.append(f"{self.memory.mean:.2f}x memory")
        if self.speed is not None:
            verdict = self.speed_verdict
            noise = f"noise ±{max(self.speed_noise, 0):.0%}" if finite(self.speed_noise) else "no noise measured"
            parts.append(f"{self.speed.mean:.2f}x speed" if verdict != "within noise"
                         else f"speed within noise ({self.speed.mean:.2f}x, {noise})")
        if self.loss_delta is not None:
            parts.append(f"loss {self.loss_verdict} (Δ {self.loss_delta.text('+.3f')})")
        return f"{self.arm}: {', '.join(parts) or 'no numbers recorded'}"


@dataclass
class TechniqueCard:
    """The technique study: each arm against the baseline."""

    arms: list[ArmResult]
    baseline_seeds: list[int]
    tokens: float | None  # the equal token count the losses are compared at
    target_loss: float | None
    notes: list[str] = field(default_factory=list)  # what makes the card less than it should be

    def sentences(self) -> list[str]:
        return [arm.sentence() for arm in self.arms] + self.notes

    def rows(self) -> list[dict]:
        """One row per arm with every number: the CSV (study.csv)."""
        return [arm_row(arm) for arm in self.arms]

    def table_rows(self) -> list[dict]:
        """One row per arm, each cell a short text: the printed card, study.md and the viewer's table."""
        return [arm_cells(arm) for arm in self.arms]

    def markdown(self) -> str:
        rows = self.table_rows()
        head = list(rows[0]) if rows else []
        lines = [f"# Technique study: {len(self.arms)} arms against `baseline` "
                 f"({len(self.baseline_seeds)} seeds: {', '.join(map(str, self.baseline_seeds)) or 'none'})", ""]
        if self.tokens is not None:
            target = (f"; time to target = seconds to val loss ≤ {self.target_loss:.4f}"
                      if self.target_loss is not None else "")
            lines += [f"Losses compared at {self.tokens:,.0f} tokens{target}. Ratios are arm / baseline, paired "
                      f"by seed, ± their 95% interval.", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_cell(row[k]) for k in head) + " |" for row in rows]
        lines += ["", *[f"- {s}" for s in self.sentences()]]
        return "\n".join(lines) + "\n"


def arm_row(arm: ArmResult) -> dict:
    """Every number of an arm, plain (None where there is none): a CSV row."""
    def parts(name: str, interval: Interval | None) -> dict:
        return {name: interval.mean if interval else None,
                f"{name}_ci95": interval.half_width if interval and finite(interval.half_width) else None}

    return {
        "arm": arm.arm, "status": arm.status, "reason": arm.reason, "change": arm.change, "seeds": len(arm.seeds),
        **parts("tok_per_s_ratio", arm.speed), "speed_noise": _or_none(arm.speed_noise),
        "speed": arm.speed_verdict if arm.speed else None, **parts("step_time_ratio", arm.step_time),
        "step_ms": arm.step_ms, **parts("peak_mem_ratio", arm.memory), "est_peak_mem_ratio": arm.memory_estimate,
        "mfu": arm.mfu, "baseline_mfu": arm.baseline_mfu, **parts("val_loss_delta", arm.loss_delta),
        "seed_noise": _or_none(arm.loss_noise), "loss": arm.loss_verdict if arm.loss_delta else None,
        **parts("time_to_target_ratio", arm.time_to_target), "reached_target": arm.reached_target or None,
    }


def arm_cells(arm: ArmResult) -> dict:
    """An arm as short texts: what it changes (or why it was not measured) and each number with its interval."""
    def text(interval: Interval | None, fmt: str, suffix: str = "") -> str:
        return interval.text(fmt, suffix) if interval is not None else "-"

    if arm.status != "measured":
        return {"arm": arm.arm, "change": f"{arm.status}: {arm.reason}" if arm.reason else arm.status,
                **dict.fromkeys(("tokens/s", "step ms", "peak memory (est.)", "MFU", "val loss Δ", "time to target"),
                                "-")}
    estimate = f" ({arm.memory_estimate:.2f}x)" if finite(arm.memory_estimate) else ""
    return {
        "arm": arm.arm, "change": arm.change or "nothing",
        "tokens/s": f"{text(arm.speed, '.2f', 'x')} {arm.speed_verdict}",
        "step ms": f"{arm.step_ms:.1f}" if finite(arm.step_ms) else "-",
        "peak memory (est.)": text(arm.memory, ".2f", "x") + estimate,
        "MFU": (f"{arm.mfu:.1%}" + (f" (base {arm.baseline_mfu:.1%})" if finite(arm.baseline_mfu) else ""))
        if finite(arm.mfu) else "-",
        "val loss Δ": f"{text(arm.loss_delta, '+.4f')} {arm.loss_verdict}"
        + (f" (noise ±{arm.loss_noise:.4f})" if finite(arm.loss_noise) else ""),
        "time to target": f"{text(arm.time_to_target, '.2f', 'x')} ({arm.reached_target} reached)"
        if arm.time_to_target else (f"not reached ({arm.reached_target})" if arm.reached_target else "-"),
    }


def _or_none(value) -> float | None:
    return float(value) if finite(value) else None


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def technique_card(runs: list[RunRecord], target_loss: float | None = None) -> TechniqueCard:
    """The card of a technique study from its runs' records (see the module docstring)."""
    by_arm: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.config.get("study.kind") == TECHNIQUES:
            by_arm.setdefault(str(run.config.get("study.arm") or BASELINE), []).append(run)
    base_runs = [r for r in by_arm.get(BASELINE, []) if r.status == "completed"]
    base = {n.seed: n for n in map(run_numbers, base_runs)}
    measured = [run_numbers(r) for arm_runs in by_arm.values() for r in arm_runs if r.status == "completed"]
    ends = [max(t for t, _, _ in n.evals) for n in measured if n.evals]
    tokens = float(min(ends)) if ends else None
    base_losses = [loss_at(n, tokens) for n in base.values()] if tokens is not None else []
    if target_loss is None and any(finite(v) for v in base_losses):
        target_loss = max(v for v in base_losses if finite(v))
    seed_std = float(np.std([v for v in base_losses if finite(v)], ddof=1)) if len(base_losses) > 1 else math.nan
    reference = base_runs[0].config if base_runs else {}
    arms = [_arm_result(name, arm_runs, base, reference, tokens, target_loss, seed_std)
            for name, arm_runs in sorted(by_arm.items(), key=lambda item: (item[0] != BASELINE, item[0]))
            if name != BASELINE]
    arms.sort(key=lambda arm: (arm.status != "measured", arm.arm))  # the measured first, then the why-nots
    notes = [] if base else ["no baseline run completed: no arm can be compared (run technique=baseline too)."]
    if len(base) == 1:
        notes.append("one baseline seed: loss differences cannot be told from seed noise (run 2 or more seeds).")
    notes += _fairness_notes(by_arm, base_runs)
    noise = [arm.speed_noise for arm in arms if finite(arm.speed_noise)]
    if noise and float(np.median(noise)) > BUSY_SPEED_NOISE:
        notes.append(f"the runs' tokens/s windows scatter by ±{float(np.median(noise)):.0%} (median over the arms): "
                     f"the machine was busy or shared, and speed ratios inside that read 'within noise'; measure "
                     f"speed on an idle machine.")
    return TechniqueCard(arms, sorted(s for s in base if s is not None), tokens, target_loss, notes)


def _arm_result(name: str, arm_runs: list[RunRecord], base: dict, reference: dict, tokens: float | None,
                target: float | None, seed_std: float) -> ArmResult:
    done = [r for r in arm_runs if r.status == "completed"]
    result = ArmResult(name, "measured", change=_change(reference, arm_runs[0].config) if reference else "")
    if not done:
        first = arm_runs[0]
        result.status = first.status if first.status in (UNSUPPORTED, "failed", "running", "queued") else "not run"
        result.reason = _first_line(first.info.get("error"))
        return result
    pairs = [(n, base[n.seed]) for n in map(run_numbers, done) if n.seed in base]
    if not pairs:
        result.status, result.reason = "no baseline", "no completed baseline run with the same seed"
        return result
    result.seeds = sorted(a.seed for a, _ in pairs)
    result.speed = Interval.of([_ratio(a.tok_per_s, b.tok_per_s) for a, b in pairs])
    noise = [math.hypot(a.speed_noise, b.speed_noise) for a, b in pairs if finite(a.speed_noise + b.speed_noise)]
    result.speed_noise = float(np.mean(noise)) if noise else math.nan
    result.step_time = Interval.of([_ratio(a.step_ms, b.step_ms) for a, b in pairs])
    result.step_ms = _mean([a.step_ms for a, _ in pairs])
    result.memory = Interval.of([_ratio(a.peak_mem_gb, b.peak_mem_gb) for a, b in pairs])
    result.memory_estimate = _mean([_ratio(a.est_peak_mem_gb, b.est_peak_mem_gb) for a, b in pairs])
    result.mfu, result.baseline_mfu = _mean([a.mfu for a, _ in pairs]), _mean([b.mfu for _, b in pairs])
    if tokens is not None:
        result.loss_delta = Interval.of([_minus(loss_at(a, tokens), loss_at(b, tokens)) for a, b in pairs])
        result.loss_noise = NOISE_SIGMAS * seed_std * math.sqrt(2 / len(pairs)) if finite(seed_std) else math.nan
    if target is not None:
        times = [(seconds_to(a, target), seconds_to(b, target)) for a, b in pairs]
        result.time_to_target = Interval.of([_ratio(a, b) for a, b in times])
        result.reached_target = f"{sum(a is not None for a, _ in times)} of {len(times)} seeds"
    return result


def _fairness_notes(by_arm: dict[str, list[RunRecord]], base_runs: list[RunRecord]) -> list[str]:
    """Arms that do not train the same global batch or token count as the baseline: not a fair comparison."""
    if not base_runs:
        return []
    base = run_numbers(base_runs[0])
    notes = []
    for name, arm_runs in by_arm.items():
        done = [run_numbers(r) for r in arm_runs if r.status == "completed"]
        if not done:
            continue
        if done[0].global_batch != base.global_batch:
            notes.append(f"{name} trains a global batch of {done[0].global_batch} sequences, the baseline "
                         f"{base.global_batch}: not the same training.")
        if done[0].tokens != base.tokens:
            notes.append(f"{name} trained {done[0].tokens or 0:,.0f} tokens, the baseline {base.tokens or 0:,.0f}: "
                         f"losses are compared at the fewer.")
    return notes


def _change(base: dict, arm: dict) -> str:
    """The config keys the arm changes (the seed and the study's own keys aside)."""
    skip = ("train.seed", "study.", "run.")
    keys = sorted(k for k in base.keys() | arm.keys()
                  if not k.startswith(skip) and repr(base.get(k)) != repr(arm.get(k)))
    return ", ".join(f"{k} {base.get(k)} → {arm.get(k)}" for k in keys)


def _first_line(text) -> str:
    lines = [line.strip(" -") for line in str(text or "").splitlines() if line.strip(" -")]
    lines = [line for line in lines if not line.startswith("invalid config")]
    return lines[0] if lines else ""


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if finite(a) and finite(b) and b else None


def _minus(a, b) -> float | None:
    return float(a) - float(b) if finite(a) and finite(b) else None


def _mean(values) -> float | None:
    values = [float(v) for v in values if finite(v)]
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------------
# The scaling card


@dataclass
class IsoFlop:
    """One FLOP budget: the final val loss of each model size, and the parabola's minimum in log params."""

    budget: float
    points: list[tuple[float, float, float]]  # (params, tokens, final val loss), by params
    params_opt: float | None = None
    tokens_opt: float | None = None
    loss_opt: float | None = None
    trust: str = ""  # why the minimum is not to be trusted ("" when it is)

    @property
    def tokens_per_param(self) -> float | None:
        return self.tokens_opt / self.params_opt if self.params_opt and self.tokens_opt else None


@dataclass
class PowerLaw:
    """y = coefficient x compute^exponent, fitted in log-log over the budgets whose minimum is trusted."""

    what: str
    exponent: float | None = None
    coefficient: float | None = None
    points: int = 0
    trust: str = ""

    def text(self) -> str:
        if self.exponent is None:
            return f"{self.what}: not fitted ({self.trust})"
        note = f" ({self.trust})" if self.trust else ""
        return f"{self.what} ∝ C^{self.exponent:.3f} over {self.points} budgets{note}"


@dataclass
class ScalingCard:
    curves: list[IsoFlop]
    params_law: PowerLaw
    tokens_law: PowerLaw
    loss_law: PowerLaw
    notes: list[str] = field(default_factory=list)

    def sentences(self) -> list[str]:
        lines = []
        for curve in self.curves:
            if curve.params_opt is None:
                lines.append(f"budget {curve.budget:.3g} FLOPs: no minimum ({curve.trust}).")
                continue
            caveat = f" — not trustworthy: {curve.trust}" if curve.trust else ""
            lines.append(f"budget {curve.budget:.3g} FLOPs: best {_amount(curve.params_opt)} params on "
                         f"{_amount(curve.tokens_opt)} tokens ({curve.tokens_per_param:.1f} tokens/param, "
                         f"Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM:.0f}), val loss {curve.loss_opt:.4f}{caveat}.")
        lines += [law.text() + "." for law in (self.params_law, self.tokens_law, self.loss_law)]
        return lines + self.notes

    def rows(self) -> list[dict]:
        """One row per (budget, model size), with the budget's fitted minimum beside it."""
        return [{"budget_flops": c.budget, "params": p, "tokens": t, "val_loss": loss,
                 "params_opt": c.params_opt, "tokens_opt": c.tokens_opt, "loss_opt": c.loss_opt,
                 "tokens_per_param_opt": c.tokens_per_param, "trust": c.trust or "ok"}
                for c in self.curves for p, t, loss in c.points]

    def table_rows(self) -> list[dict]:
        """One row per budget, each cell a short text: the printed card and the viewer's table."""
        return [{"budget (FLOPs)": f"{c.budget:.3g}", "sizes": str(len(c.points)), "best params": _sci(c.params_opt),
                 "best tokens": _sci(c.tokens_opt), "tokens/param": _sci(c.tokens_per_param),
                 "loss at best": _sci(c.loss_opt), "trust": c.trust or "ok"} for c in self.curves]

    def markdown(self) -> str:
        lines = ["# Scaling study: isoFLOP curves and compute-optimal power laws", "",
                 "| budget (FLOPs) | sizes | best params | best tokens | tokens/param | loss at best | trust |",
                 "|---|---|---|---|---|---|---|"]
        for c in self.curves:
            lines.append(f"| {c.budget:.3g} | {len(c.points)} | {_sci(c.params_opt)} | {_sci(c.tokens_opt)} | "
                         f"{_sci(c.tokens_per_param)} | {_sci(c.loss_opt)} | {_cell(c.trust or 'ok')} |")
        return "\n".join(lines + ["", *[f"- {s}" for s in self.sentences()]]) + "\n"


def _amount(value: float) -> str:
    """29.0M, 2.03B, 850k: a count of parameters or tokens as people say it."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _sci(value) -> str:
    return f"{value:.4g}" if finite(value) else "-"


def scaling_card(runs: list[RunRecord]) -> ScalingCard:
    """The card of a scaling study from its runs' records (see the module docstring)."""
    budgets: dict[float, list[tuple[float, float, float]]] = {}
    skipped = 0
    for run in runs:
        budget, point = as_number(run.config.get("train.max_flops")), _scaling_point(run)
        if run.config.get("study.kind") != SCALING or budget is None:
            continue
        if point is None:
            skipped += 1
            continue
        budgets.setdefault(float(budget), []).append(point)
    curves = [fit_isoflop(budget, points) for budget, points in sorted(budgets.items())]
    trusted = [c for c in curves if c.params_opt is not None and not c.trust]
    compute = [c.budget for c in trusted]
    card = ScalingCard(curves, fit_power_law("compute-optimal params", compute, [c.params_opt for c in trusted]),
                       fit_power_law("compute-optimal tokens", compute, [c.tokens_opt for c in trusted]),
                       fit_power_law("loss at the optimum", compute, [c.loss_opt for c in trusted]))
    if skipped:
        card.notes.append(f"{skipped} runs left out: not completed, or no parameter count or val loss recorded.")
    if not curves:
        card.notes.append("no completed scaling run with a train.max_flops budget: run nanogpt-run -m +study=scaling.")
    return card


def _scaling_point(run: RunRecord) -> tuple[float, float, float] | None:
    """(params, tokens, final val loss) of a completed run, or None."""
    evals = run.frame(EVAL)
    evals = evals[np.isfinite(evals.val_loss)]
    params = as_number(run.info.get("n_params"))
    if run.status != "completed" or not len(evals) or not params:
        return None
    return float(params), float(evals.tokens.iloc[-1]), float(evals.val_loss.iloc[-1])


def fit_isoflop(budget: float, points: list[tuple[float, float, float]]) -> IsoFlop:
    """The minimum of val loss over log10(params) at one budget, by a parabola through the points; ``trust``
    says why not to believe it: fewer than MIN_ISOFLOP_POINTS sizes, a curve that does not bend upwards, or
    the lowest loss at the smallest or largest size (the optimum may lie outside the sizes tried)."""
    points = sorted(points)
    curve = IsoFlop(budget, points)
    sizes = sorted({p for p, _, _ in points})
    if len(sizes) < MIN_ISOFLOP_POINTS:
        curve.trust = f"too few sizes ({len(sizes)}; a minimum needs {MIN_ISOFLOP_POINTS})"
        return curve
    x = np.log10([p for p, _, _ in points])
    losses = np.array([loss for _, _, loss in points])
    a, b, c = np.polyfit(x, losses, 2)
    if a <= 0:
        curve.trust = "the curve does not bend upwards: no minimum between the sizes tried"
        return curve
    best = -b / (2 * a)
    slope, intercept = np.polyfit(x, np.log10([t for _, t, _ in points]), 1)
    curve.params_opt, curve.loss_opt = float(10**best), float(a * best**2 + b * best + c)
    curve.tokens_opt = float(10 ** (slope * best + intercept))
    lowest = points[int(np.argmin(losses))][0]
    if lowest in (sizes[0], sizes[-1]) or not x.min() <= best <= x.max():
        curve.trust = "minimum at an edge of the sizes tried: add a " + (
            "smaller" if lowest == sizes[0] or best < x.min() else "larger") + " model"
    return curve


def fit_power_law(what: str, compute: list[float], values: list[float | None]) -> PowerLaw:
    """log10(value) = exponent x log10(compute) + log10(coefficient), over the finite positive values."""
    pairs = [(c, v) for c, v in zip(compute, values, strict=True) if finite(v) and v > 0]
    law = PowerLaw(what, points=len(pairs))
    if len(pairs) < 2:
        law.trust = f"{len(pairs)} budget{'s' if len(pairs) != 1 else ''} with a trusted minimum; a line needs 2"
        return law
    slope, intercept = np.polyfit(np.log10([c for c, _ in pairs]), np.log10([v for _, v in pairs]), 1)
    law.exponent, law.coefficient = float(slope), float(10**intercept)
    if len(pairs) < MIN_TRUSTED_BUDGETS:
        law.trust = f"only {len(pairs)} budgets: the line goes through them exactly, no error estimate"
    return law
