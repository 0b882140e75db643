"""Are the runner's defaults as fast as its best fixed setting? Side by side in one process, rounds alternating.

    python scripts/bench_defaults.py --data /path/to/input.txt [--configs baby shakespeare gpt2] [--steps 60]
                                     [--rounds 3] [--nanogpt /path/to/nanoGPT] [--device cuda]

For each config (``baby``: nanoGPT's baby CPU run, batch 12 x 64; ``shakespeare``: the 10.6M model, batch
16 x 256), the runner's training loop (nanogpt_runner.train.loop.train, evaluation off) with:

  defaults     nothing set: precision=auto (probed on this model, cached), attention=sdpa
  plan=auto    the winner of nanogpt-plan (its cost printed apart, and against a 2,000-step run)
  fixed        every fixed precision the device runs natively x attention sdpa/math (fp32 among them)
  nanoGPT      with --nanogpt: nanoGPT's own train.py at the same model and batch, as nanoGPT runs by default
               on that device (CPU: fp32, no compile; GPU: bf16 where the GPU has it, torch.compile), from a
               copy of the checkout with shakespeare_char prepared from --data; its tokens/s from its
               per-iteration times (its compile falls in the 5 warm-up iterations)

prints tokens/s (the median over rounds), MFU against the matmul peak of the precision used, and
defaults / best fixed (goal: >= 0.95, "auto must not lose to a hand choice") and, with --nanogpt,
defaults / nanoGPT. Every variant runs once per round, rounds alternating and each starting at a different
variant, so background load and warm-up hit all alike.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import config, runner_loop  # noqa: E402  (the runner's loop, timed as scripts/bench.py times it)

from nanogpt_runner.data.prepare import prepare  # noqa: E402
from nanogpt_runner.data.prepared import cache_dir  # noqa: E402
from nanogpt_runner.model.gpt import GPT  # noqa: E402
from nanogpt_runner.perf import (
    autotune,
    hardware,  # noqa: E402
)
from nanogpt_runner.perf.plan import available_memory, cached_plan  # noqa: E402

CONFIGS = {"baby": ["+experiment=baby_cpu"], "shakespeare": ["model=shakespeare", "train.batch_size=16"],
           "gpt2": ["model=gpt2", "train.batch_size=12", "model.dropout=0.0", "model.bias=false",
                    "model.activation=gelu"]}  # nanoGPT's GPT: no biases, exact GELU
DEFAULT_CONFIGS = ["baby", "shakespeare"]  # gpt2 (124M, block 1024) only when asked: a GPU's work
# The same model, batch and dropout in nanoGPT's terms (its README's CPU run, its shakespeare_char config, and
# GPT-2 124M's shape on the same characters)
NANOGPT_CONFIGS = {"baby": ["--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                            "--dropout=0.0"],
                   "shakespeare": ["--batch_size=16"],
                   "gpt2": ["--block_size=1024", "--batch_size=12", "--n_layer=12", "--n_head=12", "--n_embd=768",
                            "--dropout=0.0"]}
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms", re.MULTILINE)
# nanoGPT's own choices per device: on a CPU its README's run; on a GPU its train.py defaults
NANOGPT_DEVICE_DEFAULTS = {"cpu": ["--device=cpu", "--compile=False", "--dtype=float32"], "cuda": ["--device=cuda"]}
PLAN_GOAL_STEPS = 2000  # the yardstick: a plan costs under 10% of a 2,000-step run
NANOGPT_PRECISION = {"cpu": "fp32", "cuda": "bf16"}  # its dtype default on a GPU with bf16 (Ampere and later)


def variants(precisions: list[str]) -> dict[str, list[str]]:
    fixed = {f"{p} {a}": [f"train.precision={p}", f"model.attention={a}"] for p in precisions for a in ("sdpa", "math")}
    return {"defaults": [], **fixed}


def nanogpt_copy(checkout: Path, text: str, workdir: Path) -> Path:
    """A copy of a nanoGPT checkout with data/shakespeare_char prepared from ``text`` by its own prepare.py
    (which then downloads nothing); the user's checkout is not written to."""
    copy = workdir / "nanoGPT"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl"))
    data = copy / "data" / "shakespeare_char"
    shutil.copyfile(text, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return copy


def nanogpt_loop(copy: Path, name: str, steps: int, tokens_per_iter: int, device: torch.device) -> float:
    """nanoGPT's train.py for ``steps`` timed iterations after 5 warm-up ones; tokens/s from its own
    per-iteration times (its step-0 evaluation, one batch, falls in the warm-up)."""
    result = subprocess.run(
        [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CONFIGS[name],
         *NANOGPT_DEVICE_DEFAULTS[device.type], f"--max_iters={steps + 5}", f"--lr_decay_iters={steps + 5}",
         f"--eval_interval={(steps + 5) * 10}", "--eval_iters=1", "--log_interval=1", f"--out_dir={copy / 'out'}"],
        cwd=copy, capture_output=True, text=True)
    times_ms = [float(ms) for it, ms in NANOGPT_ITER.findall(result.stdout) if int(it) > 5]
    if len(times_ms) < steps:
        raise SystemExit(f"nanoGPT's train.py (exit {result.returncode}) printed {len(times_ms)} timed iterations, "
                         f"not {steps}:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")
    return tokens_per_iter * len(times_ms) / (sum(times_ms) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT to time beside the runner "
                        "(needs --data)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the first GPU")
    args = parser.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if args.nanogpt and not args.data:
        parser.error("--nanogpt needs --data (nanoGPT's prepare.py would otherwise download the text)")
    workdir = Path(tempfile.mkdtemp(prefix="nanogpt-defaults-"))
    reference = nanogpt_copy(args.nanogpt, args.data, workdir) if args.nanogpt else None
    common = [f"train.max_iters={args.steps + 5}", f"train.eval_interval={args.steps * 10}", "train.eval_iters=1",
              "train.log_interval=5", "train.ckpt_interval=0", "run.progress=false", f"train.device={args.device}",
              *([f"data.path={args.data}"] if args.data else [])]
    cache = cache_dir(config(common).data)
    caps = hardware.device_caps(args.device, device)
    precisions, skipped = hardware.precision_candidates(device, caps, cache)
    print(f"machine: {hardware.describe(device)}; torch {torch.__version__}; {args.steps} steps per round, "
          f"median of {args.rounds} alternating rounds" + "".join(f"; {p}: {why}" for p, why in skipped.items()))
    for name in args.configs:
        overrides = [*CONFIGS[name], *common]
        cfg = config(overrides)
        data = prepare(cfg.data)
        plan_cfg = config([*overrides, "train.plan=auto"])
        # Planned for the run the goal speaks of (2,000 steps: a plan spends at most plan.PLAN_SHARE of its
        # run), timed at the rounds' length.
        planned_for = config([*overrides, "train.plan=auto", f"train.max_iters={PLAN_GOAL_STEPS}"])
        # What any run pays at its first steps (CUDA's context, kernel loading, the allocator) is not the plan's.
        autotune.time_steps(cfg, data.vocab_size, device, autotune.Setting.of(cfg, precisions[0]), seconds=0.0)
        started = time.perf_counter()
        plan = cached_plan(planned_for, data.vocab_size, device, available_memory(plan_cfg), say=lambda _: None)
        plan_seconds = time.perf_counter() - started
        runs = {label: config([*overrides, *extra]) for label, extra in variants(precisions).items()}
        runs["plan=auto"] = plan.apply(plan_cfg)
        results: dict[str, list[float]] = {label: [] for label in runs}
        tokens_per_iter = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        labels = list(runs)
        for round_index in range(args.rounds):
            # Each round starts at a different variant, so no variant always runs first (on a GPU the first run
            # after a pause meets lower clocks).
            shift = round_index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                results[label].append(runner_loop(runs[label], data, workdir))
            if reference:
                tokens_per_s = nanogpt_loop(reference, name, args.steps, tokens_per_iter, device)
                results.setdefault("nanoGPT", []).append(tokens_per_s)
        flops = GPT(cfg.model, data.vocab_size).flops_per_token()
        cached = "(cached) " if plan.cached else ""
        print(f"\n{name}: batch {cfg.train.batch_size} x {cfg.model.block_size}; plan {cached}took "
              f"{plan_seconds:.1f} s, won by {' '.join(plan.best.overrides())}")
        medians = {label: statistics.median(values) for label, values in results.items()}
        # What the probe chose for the defaults (cached by their runs).
        chosen = autotune.resolve_precision(runs["defaults"], data.vocab_size, device, caps, cache)[0]
        for label, tps in medians.items():
            precision = runs[label].train.precision if label in runs else NANOGPT_PRECISION[device.type]
            if precision == "auto":
                precision = chosen
            hardware.configure_matmul(device, precision, cfg.train.tf32)  # as that run did: fp32 on TF32 cores
            precision = hardware.matmul_precision(device, precision)
            mfu = flops * tps / hardware.peak_flops(device, precision, cache)
            print(f"  {label:<12}{tps:>10,.0f} tokens/s  MFU {mfu:6.1%} of the {precision} peak")
        fixed = {k: v for k, v in medians.items() if k not in ("defaults", "plan=auto", "nanoGPT")}
        best = max(fixed, key=fixed.get)
        print(f"  defaults / best fixed ({best}) = {medians['defaults'] / fixed[best]:.3f}  (goal >= 0.95); "
              f"plan=auto / best fixed = {medians['plan=auto'] / fixed[best]:.3f}")
        if f"{chosen} {runs['defaults'].model.attention}" == best:
            print(f"  the defaults ran {best}, the best fixed setting itself: their ratio is this machine's "
                  "run-to-run spread")
        if reference:
            print(f"  defaults / nanoGPT = {medians['defaults'] / medians['nanoGPT']:.3f}; fp32 sdpa / nanoGPT = "
                  f"{medians['fp32 sdpa'] / medians['nanoGPT']:.3f}")
        run_2000 = PLAN_GOAL_STEPS * cfg.train.batch_size * cfg.model.block_size / medians["defaults"]
        if not plan.cached:
            print(f"  plan cost {plan_seconds:.1f} s = {plan_seconds / run_2000:.1%} of a {PLAN_GOAL_STEPS:,}-step "
                  f"run at the defaults' speed ({run_2000:.0f} s; goal < 10%)")


if __name__ == "__main__":
    main()
