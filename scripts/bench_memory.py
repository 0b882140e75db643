"""The memory estimate against the measured peak, for presets and layouts, through the real CLI.

    python scripts/bench_memory.py --data /path/to/input.txt [--steps 3] [--precision fp32] [--only NAME ...]

Each case is a short ``nanogpt-run``; run.json holds the estimate (nanogpt_runner.perf.memory) and the process's
baseline, the summary its peak. On a CPU the measured number is the resident set's growth over the baseline
(rank 0's); on a GPU the CUDA allocator's peak. Prints estimate / measured per case (target: within 20%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from bench import nanogpt_run  # scripts/bench.py, beside this script

from nanogpt_runner.perf import hardware

CASES = {
    "shakespeare": ["model=shakespeare", "train.batch_size=8"],
    "shakespeare math": ["model=shakespeare", "train.batch_size=8", "model.attention=math"],
    "shakespeare recompute": ["model=shakespeare", "train.batch_size=8", "train.recompute=true"],
    "shakespeare accum 2": ["model=shakespeare", "train.batch_size=4", "train.grad_accum=2"],
    "shakespeare no dropout": ["model=shakespeare", "train.batch_size=8", "model.dropout=0"],
    "baby batch 64": ["model=baby", "train.batch_size=64"],
    "gpt2 batch 4": ["model=gpt2", "train.batch_size=4"],
    "shakespeare ddp": ["model=shakespeare", "train.batch_size=8", "parallel=ddp"],
    "shakespeare fsdp": ["model=shakespeare", "train.batch_size=8", "parallel=fsdp"],
    "shakespeare tp": ["model=shakespeare", "train.batch_size=8", "parallel=tp"],
    "shakespeare pp gpipe": ["model=shakespeare", "train.batch_size=8", "parallel=pp", "parallel.pp_schedule=gpipe"],
}


def measure(overrides: list[str], root: Path, steps: int, precision: str) -> tuple[float, float]:
    """(estimated, measured) peak bytes of a short run: growth over the baseline on a CPU."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    nanogpt_run([*overrides, f"train.max_iters={steps}", f"train.eval_interval={steps}", "train.eval_iters=1",
                 "train.log_interval=1", f"train.precision={precision}", "optimizer.warmup_iters=0",
                 "run.progress=false", "train.ckpt_interval=0", f"hydra.run.dir={run_dir}"])
    record = json.loads((run_dir / "run.json").read_text())
    est = record["memory_estimate"]
    measured = record["summary"]["peak_mem_gb"] - est["baseline_gb"]
    return est["total_per_rank"] * 1e9, measured * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the estimate counts fp32 and half-precision activations apart")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args()
    device = torch.device(hardware.device_kind("auto"))  # what the runs' train.device=auto picks
    print(f"machine: {hardware.describe(device)}; precision {args.precision}")
    root = Path(tempfile.mkdtemp(prefix="nanogpt-memory-"))
    extra = [f"data.path={args.data}"] if args.data else []
    print(f"{'case':<28}{'estimate MB':>12}{'measured MB':>12}{'ratio':>8}")
    for name, overrides in CASES.items():
        if args.only and name not in args.only:
            continue
        est, measured = measure([*overrides, *extra], root, args.steps, args.precision)
        print(f"{name:<28}{est / 1e6:>12.0f}{measured / 1e6:>12.0f}{est / measured:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
