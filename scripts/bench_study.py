"""Wall time of a study preset through the real CLI, with its card (docs/studies.md).

    python scripts/bench_study.py [--study techniques] [--out DIR] [OVERRIDES...]

Runs ``nanogpt-run -m +study=STUDY OVERRIDES hydra.sweep.dir=OUT`` (a fresh temporary folder unless --out
names one), shows its output as it comes (the sweep table and the card), then prints the wall time, the
number of jobs and the CPU it ran on. ``nanogpt-report OUT`` afterwards writes the card's files.
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

from nanogpt_runner.perf.hardware import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="techniques", help="a preset of conf/study/ (default techniques)")
    parser.add_argument("--out", type=Path, default=None, help="the sweep folder (default: a new temporary one)")
    parser.add_argument("overrides", nargs="*", help="more nanogpt-run overrides, e.g. technique=baseline,recompute")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=f"study_{args.study}_"))
    command = [str(Path(sys.executable).parent / "nanogpt-run"), "-m", f"+study={args.study}", *args.overrides,
               f"hydra.sweep.dir={out}", "run.progress=false"]
    start = time.perf_counter()
    code = subprocess.run(command).returncode
    wall = time.perf_counter() - start
    jobs = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    statuses = {s: sum(j.get("status") == s for j in jobs) for s in sorted({j.get("status") for j in jobs})}
    print(f"\nstudy {args.study}: {len(jobs)} jobs ({', '.join(f'{n} {s}' for s, n in statuses.items())}) in "
          f"{wall / 60:.1f} min wall time on {cpu_model()} ({len(os.sched_getaffinity(0))} cores); "
          f"exit code {code}; sweep folder {out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
