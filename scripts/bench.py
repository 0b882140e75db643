"""Runner overhead and precision, measured side by side in one process.

    python scripts/bench.py --data /path/to/input.txt [--model baby] [--steps 200] [--rounds 3] [--device cuda]

1. The runner's training loop (nanogpt_runner.train.loop.train, with its logging, evaluation off) against a
   bare hand-written loop over the same model, batch and dtype: tokens/s, MFU and the ratio
   (goal: runner >= 0.97x the bare loop). Rounds alternate so background load hits both alike.
2. fp32 against bf16 autocast for the 10.6M model (model=shakespeare) in the bare loop.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from nanogpt_runner.config.schema import CONF_DIR, register_schema
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.perf import hardware
from nanogpt_runner.runs.rundir import RunReader, RunWriter
from nanogpt_runner.train.batches import Batches
from nanogpt_runner.train.loop import train


def nanogpt_run(args: list[str]) -> None:
    """``nanogpt-run ARGS`` (the one beside this Python); a run that fails ends the benchmark with its stderr."""
    done = subprocess.run([str(Path(sys.executable).parent / "nanogpt-run"), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{Path(sys.argv[0]).name}: nanogpt-run {' '.join(args)} exited with {done.returncode}:\n"
                         f"{done.stderr[-2000:]}")


def config(overrides: list[str]):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def bare_loop(cfg, data, precision: str, steps: int, device: torch.device) -> float:
    """The smallest loop that trains like the runner: forward, backward, clip, AdamW. Returns tokens/s."""
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model, data.vocab_size).to(device)
    optimizers = build_optimizers(model, cfg.optimizer)
    batches = Batches(data, "train", cfg.model.block_size, cfg.train.seed, device)
    autocast = hardware.autocast(device.type, precision)
    batch = cfg.train.batch_size
    warmup = 5
    for step in range(1, steps + warmup + 1):  # the runner's steps are 1-based too: same batches
        if step == warmup + 1:
            hardware.synchronize(device)
            start = time.perf_counter()
        x, y = batches.get(step, 0, batch)
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizers.step()
        optimizers.zero_grad()
    hardware.synchronize(device)
    return steps * batch * cfg.model.block_size / (time.perf_counter() - start)


def runner_loop(cfg, data, workdir: Path) -> float:
    """The runner's own tokens/s from its metrics lines, the first window (5 warm-up steps, as in the bare
    loop) left out."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    writer = RunWriter(run_dir)
    train(cfg, run_dir, data, writer)
    writer.close()
    reader = RunReader(run_dir)
    reader.refresh()
    windows = reader.metrics.train[1:]
    return sum(w["tok_per_s"] * w["step_ms"] for w in windows) / sum(w["step_ms"] for w in windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt (default: the prepared cache or the fallback)")
    parser.add_argument("--model", default="baby")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision-steps", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the first GPU")
    args = parser.parse_args()
    data_override = [f"data.path={args.data}"] if args.data else []
    workdir = Path(tempfile.mkdtemp(prefix="nanogpt-bench-"))
    cfg = config([f"model={args.model}", "train.precision=fp32", f"train.max_iters={args.steps + 5}",
                  f"train.eval_interval={args.steps * 10}", "train.eval_iters=1", "train.log_interval=5",
                  "run.progress=false", f"train.device={args.device}", *data_override])
    data = prepare(cfg.data)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    hardware.configure_matmul(device, "fp32", cfg.train.tf32)  # as the runner does: both loops alike
    peak = hardware.peak_flops(device, hardware.matmul_precision(device, "fp32"), workdir)
    flops = GPT(cfg.model, data.vocab_size).flops_per_token()
    print(f"machine: {hardware.describe(device)}; torch {torch.__version__}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"model={args.model}, batch {cfg.train.batch_size} x block {cfg.model.block_size}, {args.steps} steps/round")

    bare, runner = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(cfg, data, "fp32", args.steps, device))
        runner.append(runner_loop(cfg, data, workdir))
    b, r = statistics.median(bare), statistics.median(runner)
    print(f"{'loop':<8}{'tokens/s':>12}{'MFU':>8}   (median of {args.rounds} alternating rounds)")
    for name, tps in (("bare", b), ("runner", r)):
        print(f"{name:<8}{tps:>12,.0f}{flops * tps / peak:>8.1%}")
    print(f"runner / bare = {r / b:.3f}  (goal >= 0.97)")

    big = config(["model=shakespeare", "train.batch_size=8", *data_override])
    print(f"\nprecision at model=shakespeare (10.6M), batch 8 x 256, {args.precision_steps} steps, bare loop:")
    bf16_peak = hardware.peak_flops(device, "bf16", workdir)
    if bf16_peak < 0.1 * peak:
        print(f"bf16 matmul peak here is {bf16_peak / 1e9:.1f} GFLOP/s vs fp32 {peak / 1e9:.0f} GFLOP/s: this CPU "
              f"emulates bf16 (no AVX512-BF16/AMX), so precision=auto picks fp32; timed bf16 run skipped.")
        return
    results = {p: bare_loop(big, data, p, args.precision_steps, device) for p in ("fp32", "bf16")}
    for precision, tps in results.items():
        print(f"{precision:<6}{tps:>10,.0f} tokens/s")
    print(f"bf16 / fp32 = {results['bf16'] / results['fp32']:.2f}")


if __name__ == "__main__":
    main()
