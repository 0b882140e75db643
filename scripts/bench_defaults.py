"""Are the runner's defaults as fast as its best fixed setting? Side by side in one process, rounds alternating.

    python scripts/bench_defaults.py --data /path/to/input.txt [--configs baby shakespeare] [--steps 60] [--rounds 3]

For each config (``baby``: nanoGPT's baby CPU run, batch 12 x 64; ``shakespeare``: the 10.6M model, batch
16 x 256), the runner's training loop (nanogpt_runner.train.train, evaluation off) with:

  defaults     nothing set: precision=auto (probed on this model, cached), attention=sdpa
  plan=auto    the winner of nanogpt-plan (its cost printed apart, and against a 2,000-step run)
  fixed        every fixed precision this CPU runs natively x attention sdpa/math (fp32 among them)

prints tokens/s (the median over rounds), MFU against the matmul peak of the precision used, and
defaults / best fixed (goal: >= 0.95, "auto must not lose to a hand choice").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import config, runner_loop  # noqa: E402  (the runner's loop, timed as scripts/bench.py times it)

from nanogpt_runner import autotune, hardware  # noqa: E402
from nanogpt_runner.data import cache_dir  # noqa: E402
from nanogpt_runner.model import GPT  # noqa: E402
from nanogpt_runner.plan import available_memory, cached_plan  # noqa: E402
from nanogpt_runner.prepare import prepare  # noqa: E402

CONFIGS = {"baby": ["+experiment=baby_cpu"], "shakespeare": ["model=shakespeare", "train.batch_size=16"]}
CPU = torch.device("cpu")


def variants(precisions: list[str]) -> dict[str, list[str]]:
    fixed = {f"{p} {a}": [f"train.precision={p}", f"model.attention={a}"] for p in precisions for a in ("sdpa", "math")}
    return {"defaults": [], **fixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nanogpt-defaults-"))
    common = [f"train.max_iters={args.steps + 5}", f"train.eval_interval={args.steps * 10}", "train.eval_iters=1",
              "train.log_interval=5", "train.ckpt_interval=0", "run.progress=false",
              *([f"data.path={args.data}"] if args.data else [])]
    cache = cache_dir(config(common).data)
    caps = hardware.device_caps("cpu")
    precisions, skipped = hardware.precision_candidates(CPU, caps, cache)
    print(f"machine: {hardware.describe(CPU)}; torch {torch.__version__}; {args.steps} steps per round, "
          f"median of {args.rounds} alternating rounds" + "".join(f"; {p}: {why}" for p, why in skipped.items()))
    for name in args.configs:
        overrides = [*CONFIGS[name], *common]
        cfg = config(overrides)
        data = prepare(cfg.data)
        plan_cfg = config([*overrides, "train.plan=auto"])
        started = time.perf_counter()
        plan = cached_plan(plan_cfg, data.vocab_size, CPU, available_memory(plan_cfg), say=lambda _: None)
        plan_seconds = time.perf_counter() - started
        runs = {label: config([*overrides, *extra]) for label, extra in variants(precisions).items()}
        runs["plan=auto"] = plan.apply(plan_cfg)
        results: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, run_cfg in runs.items():
                results[label].append(runner_loop(run_cfg, data, workdir))
        flops = GPT(cfg.model, data.vocab_size).flops_per_token()
        cached = "(cached) " if plan.cached else ""
        print(f"\n{name}: batch {cfg.train.batch_size} x {cfg.model.block_size}; plan {cached}took "
              f"{plan_seconds:.1f} s, won by {' '.join(plan.best.overrides())}")
        medians = {label: statistics.median(values) for label, values in results.items()}
        for label, tps in medians.items():
            precision = runs[label].train.precision
            if precision == "auto":  # what the probe chose (cached by the runs above)
                precision = autotune.resolve_precision(runs[label], data.vocab_size, CPU, caps, cache)[0]
            mfu = flops * tps / hardware.peak_flops(CPU, precision, cache)
            print(f"  {label:<12}{tps:>10,.0f} tokens/s  MFU {mfu:6.1%} of the {precision} peak")
        fixed = {k: v for k, v in medians.items() if k not in ("defaults", "plan=auto")}
        best = max(fixed, key=fixed.get)
        print(f"  defaults / best fixed ({best}) = {medians['defaults'] / fixed[best]:.3f}  (goal >= 0.95); "
              f"plan=auto / best fixed = {medians['plan=auto'] / fixed[best]:.3f}")
        run_2000 = 2000 * cfg.train.batch_size * cfg.model.block_size / medians["defaults"]
        if not plan.cached:
            print(f"  plan cost {plan_seconds:.1f} s = {plan_seconds / run_2000:.1%} of a 2,000-step run at the "
                  f"defaults' speed ({run_2000:.0f} s; goal < 10%)")


if __name__ == "__main__":
    main()
