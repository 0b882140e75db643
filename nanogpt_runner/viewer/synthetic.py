"""Synthetic run folders written through RunWriter, exactly as the trainer writes them: for the tests,
the viewer benchmark, and trying the dashboard without training anything.

``python -m nanogpt_runner.viewer.synthetic DIR [N_RUNS] [STEPS]`` fills DIR with runs that differ in
learning rate, accumulation and recomputation, so every view has something to show.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from nanogpt_runner.config.schema import Config
from nanogpt_runner.runs.rundir import CHECKPOINT_DIR, RunWriter


def config(**changes) -> dict:
    """The schema's defaults for a tiny model, with dotted-key changes: config(**{"train.recompute": True})."""
    cfg = asdict(Config())
    cfg["model"].update(name="tiny", n_layer=2, n_head=2, n_embd=32, block_size=32)
    cfg["train"].update(max_iters=100, precision="fp32", log_interval=1, eval_interval=25)
    cfg["run"].update(name="tiny", progress=False)
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def write_run(run_dir: Path, steps: int = 100, *, status: str = "completed", cfg: dict | None = None,
              name: str = "tiny", start_time: float | None = None, loss_floor: float = 1.5, rate: float = 1.0,
              tok_per_s: float = 20000.0, mem_gb: float = 0.5, eval_every: int = 25, diverge_at: int | None = None,
              overfit: bool = False, sweep: dict | None = None, checkpoint: bool = False,
              speed_wobble: float = 0.02, record: dict | None = None) -> RunWriter:
    """A run folder with ``steps`` train lines and an eval every ``eval_every`` steps.

    ``rate`` scales how fast the loss falls; ``diverge_at`` makes the loss NaN from that step on;
    ``overfit`` makes val loss rise in the second half; ``speed_wobble`` is the relative swing of tokens/s
    between windows (a loaded machine swings more); ``record`` adds fields to run.json (n_params...).
    A completed run gets the trainer's summary.
    Returns the (open) writer so a test can keep appending, as a live run would.
    """
    cfg = cfg or config()
    start = start_time if start_time is not None else time.time() - steps * 0.01
    writer = RunWriter(Path(run_dir), {
        "id": Path(run_dir).name, "name": name, "status": "running", "start_time": start, "sweep": sweep,
        "overrides": [], "config": cfg, "precision": cfg["train"]["precision"], "world_size": 1, "layout": "single",
        "host": "synthetic", "pid": 0, **(record or {}),
    })
    writer.update()
    tokens_per_step = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * cfg["model"]["block_size"]
    best_val, loss = math.inf, math.nan
    for step in range(1, steps + 1):
        loss = synthetic_loss(step, loss_floor, rate)
        if diverge_at is not None and step >= diverge_at:
            loss = math.nan
        speed = tok_per_s * (1 + speed_wobble * math.sin(step))
        writer.log("train", step=step, tokens=step * tokens_per_step, loss=loss, lr=1e-3 * min(1.0, step / 10),
                   grad_norm=1.0, tok_per_s=speed, step_ms=1000.0 * tokens_per_step / speed, mfu=0.05,
                   mem_gb=mem_gb, peak_mem_gb=mem_gb * 1.1, est_peak_mem_gb=mem_gb * 1.2, elapsed_s=step * 0.01)
        if step % eval_every == 0 or step == steps:
            val = loss + 0.05 + (0.01 * max(0, step - steps // 2) if overfit else 0.0)
            best_val = min(best_val, val) if math.isfinite(val) else best_val
            writer.log("eval", step=step, tokens=step * tokens_per_step, train_loss=loss, val_loss=val,
                       elapsed_s=step * 0.01)
    if checkpoint:
        (Path(run_dir) / CHECKPOINT_DIR).mkdir(exist_ok=True)
        (Path(run_dir) / CHECKPOINT_DIR / f"step_{steps:06d}.pt").write_bytes(b"synthetic")
    if status == "completed":
        writer.update(status="completed", end_time=start + steps * 0.01, summary={
            "status": "completed", "steps": steps, "tokens": steps * tokens_per_step, "best_val_loss": best_val,
            "final_train_loss": loss, "tok_per_s": tok_per_s, "mfu": 0.05, "peak_mem_gb": mem_gb * 1.1,
            "elapsed_s": steps * 0.01})
    else:
        writer.update(status=status)
    return writer


def synthetic_loss(step: int, floor: float, rate: float) -> float:
    """A smooth, plausible loss curve: from ~4.2 down towards ``floor``, with a little deterministic noise."""
    return floor + (4.2 - floor) * math.exp(-rate * step / 60) + 0.01 * math.sin(step * 1.7)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m nanogpt_runner.viewer.synthetic DIR [N_RUNS] [STEPS]")
    root, n_runs, steps = Path(args[0]), int(args[1]) if len(args) > 1 else 6, int(args[2]) if len(args) > 2 else 300
    variants = [{}, {"train.recompute": True}, {"train.grad_accum": 4}, {"optimizer.lr": 3e-4}]
    for i in range(n_runs):
        changes = variants[i % len(variants)]
        write_run(root / f"run_{i:04d}", steps, cfg=config(**changes), start_time=time.time() - 1000 + i,
                  rate=1.0 if not changes.get("optimizer.lr") else 0.5,
                  mem_gb=0.4 if changes.get("train.recompute") else 0.5).close()
    print(f"wrote {n_runs} runs of {steps} steps under {root}")


if __name__ == "__main__":
    main()
