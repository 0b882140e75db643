"""Throughput of each parallel layout on the same model and global batch, through the real CLI.

    python scripts/bench_parallel.py                 # 4 layers, n_embd 128, block 128, global batch 16
    python scripts/bench_parallel.py --n-embd 256 --steps 40
    python scripts/bench_parallel.py --device cuda --precision bf16     # on GPUs (one rank per GPU)

Every layout trains the same model on the same 16 sequences a step (dp x batch_size x grad_accum),
fp32 unless --precision says otherwise, and reports the runner's own tokens/s (optimizer steps only:
evaluation and checkpoints are excluded) and the launch overhead: from starting ``nanogpt-run`` to the end
of the first training step (Python and torch imports, data check, torchrun and the process group, model
build, the step-0 eval).
Single-process runs use every core; a rank of a 2-process layout gets one thread each (cores / ranks).
A benchmark, not a test: the numbers depend on the machine and on whatever else it is running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# name: overrides; every layout trains on a global batch of 16 sequences.
LAYOUTS = {
    "single (1 process)": ["parallel=single", "train.batch_size=16"],
    "ddp (2 ranks)": ["parallel=ddp", "train.batch_size=8"],
    "fsdp (2 ranks)": ["parallel=fsdp", "train.batch_size=8"],
    "tp (2 ranks)": ["parallel=tp", "train.batch_size=16"],
    "pp 1f1b (2 stages, 4 micro-batches)": ["parallel=pp", "parallel.pp_schedule=1f1b", "parallel.microbatches=4",
                                            "train.batch_size=16"],
    "pp gpipe (2 stages, 4 micro-batches)": ["parallel=pp", "parallel.pp_schedule=gpipe", "parallel.microbatches=4",
                                             "train.batch_size=16"],
}


def bench(name: str, overrides: list[str], args, work: Path) -> dict:
    run_dir = work / name.split()[0].replace("(", "") / str(len(list(work.glob("*"))))
    cmd = [str(Path(sys.executable).parent / "nanogpt-run"), *overrides, "model=tiny",
           f"model.n_layer={args.n_layer}", f"model.n_head={args.n_head}", f"model.n_embd={args.n_embd}",
           f"model.block_size={args.block_size}", f"train.max_iters={args.steps}", f"train.eval_interval={args.steps}",
           "train.eval_iters=1", f"train.log_interval={max(args.steps // 4, 1)}", f"train.precision={args.precision}",
           f"train.device={args.device}",
           "train.ckpt_interval=0", "optimizer.warmup_iters=2", "run.progress=false",
           f"data.cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}"]
    cmd += [f"data.path={args.data}"] if args.data else []
    start = time.time()
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        return {"name": name, "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    run = json.loads((run_dir / "run.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "train")
    # The first train record is written after its log window; take off the window's later steps.
    first_step_end = first["time"] - first["step_ms"] / 1000 * (first["step"] - 1)
    return {"name": name, "tok_per_s": run["summary"]["tok_per_s"], "step_ms": 1000 * args.global_batch
            * args.block_size / run["summary"]["tok_per_s"], "launch_s": first_step_end - start,
            "layout": run.get("layout")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--data", default=str(CORPUS) if CORPUS.exists() else None,
                        help="tiny-shakespeare input.txt (default: ../shared copy if present, else the download)")
    parser.add_argument("--only", nargs="*", help="layout names to run (prefixes: single ddp fsdp tp pp)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    args.global_batch = 16
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
        work = Path(tmp)
        rows = [bench(name, overrides, args, work) for name, overrides in LAYOUTS.items()
                if not args.only or any(name.startswith(prefix) for prefix in args.only)]
    import torch

    from nanogpt_runner.perf.hardware import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores" if args.device == "cpu" else \
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    print(f"machine: {machine}; torch {torch.__version__}; {args.precision}; model {args.n_layer} layers, "
          f"n_embd {args.n_embd}, block {args.block_size}; global batch {args.global_batch} x {args.block_size} "
          f"tokens; {args.steps} steps")
    print(f"| {'layout':<38} | {'tokens/s':>9} | {'ms/step':>8} | {'start to first step':>19} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 10}|{'-' * 21}|")
    for row in rows:
        if "error" in row:
            print(f"| {row['name']:<38} | failed: {row['error']}")
        else:
            print(f"| {row['name']:<38} | {row['tok_per_s']:>9,.0f} | {row['step_ms']:>8.0f} | "
                  f"{row['launch_s']:>17.1f} s |")


if __name__ == "__main__":
    main()
