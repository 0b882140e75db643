"""A runs folder that shows every view of the page: a learning-rate x accumulation sweep, a technique study,
a run that failed on a non-finite loss, one stopped at its target and one still running. For the browser test,
scripts/screenshot_viewer.py and trying the page without training (written through RunWriter, as the trainer
writes). ``python -m nanogpt_runner.viewer.showcase DIR`` writes it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.viewer.synthetic import config, write_run

STUDY_ARMS = {"baseline": ({}, 20000, 0.50), "recompute": ({"train.recompute": True}, 15000, 0.35),
              "accum2": ({"train.grad_accum": 2, "train.batch_size": 6}, 19600, 0.30)}


def write_showcase(root: Path, steps: int = 200) -> RunWriter:
    """Write the folder; returns the running run's open writer (append to it to watch the page follow)."""
    now = time.time() - 10_000
    job = 0
    for lr in ("1e-3", "3e-3"):
        for accum in (1, 4):
            cfg = config(**{"optimizer.lr": float(lr), "train.grad_accum": accum})
            write_run(root / "sweep" / str(job), steps, cfg=cfg, start_time=now + job, rate=0.6 + 0.3 * job,
                      tok_per_s=20000 / (1 + 0.1 * accum), mem_gb=0.5 / accum ** 0.5,
                      sweep={"dir": str(root / "sweep"), "job": job},
                      record={"overrides": ["model=tiny", f"optimizer.lr={lr}", f"train.grad_accum={accum}"]}).close()
            job += 1
    job = 0
    for seed in (1, 2):
        for arm, (changes, speed, memory) in STUDY_ARMS.items():
            cfg = config(**{"study.kind": "techniques", "study.arm": arm, "train.seed": seed, **changes})
            write_run(root / "study" / str(job), steps, cfg=cfg, tok_per_s=speed, mem_gb=memory,
                      start_time=now + 10 + job, loss_floor=1.5 + 0.01 * seed,
                      sweep={"dir": str(root / "study"), "job": job},
                      record={"overrides": [f"technique={arm}", f"train.seed={seed}"]}).close()
            job += 1
    write_run(root / "failed-lr1", 2, cfg=config(**{"optimizer.lr": 1.0}), status="failed", diverge_at=2,
              start_time=now + 20, record={"error": "NonFiniteLoss: non-finite loss at step 2 (loss nan, grad norm "
                                                    "nan); no checkpoint was saved before it."}).close()
    target = write_run(root / "target", 120, cfg=config(**{"train.target_loss": 1.95}), start_time=now + 21)
    target.update(summary={**target.record["summary"], "stop_reason": "target_loss"})
    target.close()
    return write_run(root / "live", steps // 2, status="running", cfg=config(**{"train.recompute": True}),
                     start_time=time.time(), mem_gb=0.35)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m nanogpt_runner.viewer.showcase DIR")
    write_showcase(Path(args[0])).close()
    print(f"wrote the showcase runs under {args[0]}: nanogpt-view {args[0]}")


if __name__ == "__main__":
    main()
