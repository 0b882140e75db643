"""Where the time from ``nanogpt-run`` to the end of step 1 goes, for one process and for a 2-rank group.

    python scripts/bench_startup.py --data /path/to/input.txt [--rounds 3] [--device cpu|cuda]

Each round runs ``nanogpt-run model=baby train.max_iters=1`` (fp32, data already prepared, peak FLOP/s
cached) through the real CLI, single and ``parallel=ddp``, on the CPU (gloo; the default, whatever GPUs the
machine has) or ``--device cuda`` (NCCL, one GPU per rank), and reads the run's own timestamps:

  launch     process start -> run.json's start_time (Python, the launcher's imports, Hydra composing)
  to eval 0  -> the step-0 evaluation's line (check and data, torchrun and its workers' imports, the process
               group, the model, and the evaluation itself, whose length is printed apart)
  step 1     -> the first train line (the first training step)

and, measured apart in fresh interpreters: ``import torch``, the launcher's and the worker's imports, and
the distributed submodules (FSDP, tensor parallel, pipelining, DCP) that only some layouts need.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import nanogpt_run  # scripts/bench.py, beside this script

IMPORTS = {
    "import torch": "import torch",
    "launcher imports": "import nanogpt_runner.launch",
    "worker imports": "import nanogpt_runner.worker",
    "distributed submodules": "import torch.distributed.fsdp, torch.distributed.tensor.parallel, "
                              "torch.distributed.pipelining, torch.distributed.checkpoint",
}


def import_seconds(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def one_run(overrides: list[str], root: Path) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(dir=root))
    start_wall = time.time()
    nanogpt_run(["model=baby", "train.max_iters=1", "train.log_interval=1", "train.eval_interval=100",
                 "train.precision=fp32", "train.ckpt_interval=0", "run.progress=false", f"hydra.run.dir={run_dir}",
                 *overrides])
    record = json.loads((run_dir / "run.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval0 = next(line for line in lines if line["kind"] == "eval" and line["step"] == 0)
    step1 = next(line for line in lines if line["kind"] == "train" and line["step"] == 1)
    return {"launch": record["start_time"] - start_wall, "to eval 0": eval0["time"] - record["start_time"],
            "(eval 0 itself)": eval0["elapsed_s"], "step 1": step1["time"] - eval0["time"],
            "total": step1["time"] - start_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt (prepared once before timing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    from nanogpt_runner.config import available_cores
    from nanogpt_runner.hardware import cpu_model

    extra = [f"train.device={args.device}", *([f"data.path={args.data}"] if args.data else [])]
    root = Path(tempfile.mkdtemp(prefix="nanogpt-startup-"))
    one_run(extra, root)  # prepares the data and caches the matmul peak: not start-up costs
    print(f"machine: {cpu_model()} ({available_cores()} cores), train.device={args.device}; "
          f"median of {args.rounds} rounds")
    for name, statement in IMPORTS.items():
        print(f"{name:<26}{statistics.median(import_seconds(statement) for _ in range(args.rounds)):>7.2f} s")
    for layout, overrides in (("single", []), ("ddp, 2 ranks", ["parallel=ddp"])):
        rounds = [one_run([*extra, *overrides], root) for _ in range(args.rounds)]
        parts = ", ".join(f"{k} {statistics.median(r[k] for r in rounds):.2f} s" for k in rounds[0])
        print(f"{layout:<14}{parts}")


if __name__ == "__main__":
    main()
