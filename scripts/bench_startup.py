"""Where the time from ``nanogpt-run`` to the end of step 1 goes, for one process and for a 2-rank group.

    python scripts/bench_startup.py --data /path/to/input.txt [--rounds 3] [--device cpu|cuda]

Each round runs ``nanogpt-run model=baby train.max_iters=1`` (fp32, data already prepared, peak FLOP/s
cached) through the real CLI, single and ``parallel=ddp``, on the CPU (gloo; the default, whatever GPUs the
machine has) or ``--device cuda`` (NCCL, one GPU per rank), and reads the run's own timestamps:

  launch     process start -> run.json's start_time (Python, the launcher's imports, Hydra composing)
  to eval 0  -> the step-0 evaluation's line (check and data, torchrun and its workers' imports, the process
               group, the model, and the evaluation itself, whose length is printed apart)
  step 1     -> the first train line (the first training step)

A sweep of two such 2-rank jobs (``-m parallel=ddp train.seed=1,2``) shows what a later job of a sweep pays:
for each job, from its run.json start_time (the launcher recorded it) to its step-0 evaluation and to step 1.

And, measured apart in fresh interpreters: ``import torch`` (with ``torch._dynamo``, which every run imports),
the launcher's and the worker's imports, and the distributed submodules (FSDP, tensor parallel, pipelining,
DCP) that only some layouts need; and how long ``nanogpt-run`` takes to refuse a config mistake
(``model.dropout=2``: checked before torch is imported).
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
    # Every run imports both: torch.optim's constructors and DDP's import torch._dynamo. Their sum is the floor
    # of a run's start-up on this machine, whatever the runner does.
    "torch + torch._dynamo": "import torch, torch._dynamo",
    "launcher imports": "import nanogpt_runner.launch.app",
    "worker imports": "import nanogpt_runner.train.worker",
    "distributed submodules": "import torch.distributed.fsdp, torch.distributed.tensor.parallel, "
                              "torch.distributed.pipelining, torch.distributed.checkpoint",
}


def import_seconds(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


ONE_STEP = ["model=baby", "train.max_iters=1", "train.log_interval=1", "train.eval_interval=100",
            "train.precision=fp32", "train.ckpt_interval=0", "run.progress=false"]


def timestamps(run_dir: Path) -> tuple[float, dict, dict]:
    """run.json's start_time, the step-0 evaluation's line and the first train line."""
    record = json.loads((run_dir / "run.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval0 = next(line for line in lines if line["kind"] == "eval" and line["step"] == 0)
    step1 = next(line for line in lines if line["kind"] == "train" and line["step"] == 1)
    return record["start_time"], eval0, step1


def refusal_seconds(root: Path) -> float:
    """From ``nanogpt-run model.dropout=2`` to its exit with the invalid-config message (code 2)."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "nanogpt-run"), "model.dropout=2", f"run.root={root}"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 2 or "model.dropout" not in done.stderr:
        raise SystemExit(f"expected the invalid-config refusal, got exit {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def one_run(overrides: list[str], root: Path) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(dir=root))
    start_wall = time.time()
    nanogpt_run([*ONE_STEP, f"hydra.run.dir={run_dir}", *overrides])
    start, eval0, step1 = timestamps(run_dir)
    return {"launch": start - start_wall, "to eval 0": eval0["time"] - start,
            "(eval 0 itself)": eval0["elapsed_s"], "step 1": step1["time"] - eval0["time"],
            "total": step1["time"] - start_wall}


def one_sweep(overrides: list[str], root: Path) -> dict[str, float]:
    sweep_dir = Path(tempfile.mkdtemp(dir=root))
    nanogpt_run(["-m", *ONE_STEP, f"hydra.sweep.dir={sweep_dir}", "parallel=ddp", "train.seed=1,2", *overrides])
    times = {}
    for job in (0, 1):
        start, eval0, step1 = timestamps(sweep_dir / str(job))
        times |= {f"job {job + 1} to eval 0": eval0["time"] - start, f"job {job + 1} to step 1": step1["time"] - start}
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="tiny-shakespeare input.txt (prepared once before timing)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    from nanogpt_runner.config.schema import available_cores
    from nanogpt_runner.perf.hardware import cpu_model

    extra = [f"train.device={args.device}", *([f"data.path={args.data}"] if args.data else [])]
    root = Path(tempfile.mkdtemp(prefix="nanogpt-startup-"))
    one_run(extra, root)  # prepares the data and caches the matmul peak: not start-up costs
    print(f"machine: {cpu_model()} ({available_cores()} cores), train.device={args.device}; "
          f"median of {args.rounds} rounds")
    for name, statement in IMPORTS.items():
        print(f"{name:<26}{statistics.median(import_seconds(statement) for _ in range(args.rounds)):>7.2f} s")
    refusal = statistics.median(refusal_seconds(root) for _ in range(args.rounds))
    print(f"{'config mistake refused':<26}{refusal:>7.2f} s")
    for layout, measure in (("single", lambda: one_run(extra, root)),
                            ("ddp, 2 ranks", lambda: one_run([*extra, "parallel=ddp"], root)),
                            ("ddp sweep", lambda: one_sweep(extra, root))):
        rounds = [measure() for _ in range(args.rounds)]
        parts = ", ".join(f"{k} {statistics.median(r[k] for r in rounds):.2f} s" for k in rounds[0])
        print(f"{layout:<14}{parts}")


if __name__ == "__main__":
    main()
