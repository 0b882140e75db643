"""Viewer server-side speed on a big synthetic runs folder (no browser involved).

    python scripts/bench_viewer.py [--runs 200] [--steps 5000] [--keep DIR]

Builds RUNS runs of STEPS train lines each (one line per step, an eval every 250; one run still
running), then prints the server time (the dashboard's work plus Gradio's encoding of what it sends):
  - first full load: discover every run, build the runs table, read and downsample the curves of the
    default selection (the 5 newest runs, the running one among them), build the comparison;
  - refresh while one run grows: 10 more metrics lines appended, then the timer's tick (stat every run,
    read the new bytes, rebuild the table and the comparison);
  - idle refresh: a tick when nothing changed.
Targets (issue 27): first load < 1 s, refresh < 100 ms server time on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.viewer.dashboard import Dashboard
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import config, write_run


def build(root: Path, runs: int, steps: int):
    """The runs folder; returns the writer of the one run that is still going."""
    now = time.time()
    live = None
    for i in range(runs):
        running = i == runs - 1
        writer = write_run(root / f"2026-01-01/run_{i:04d}", steps, status="running" if running else "completed",
                           cfg=config(**{"optimizer.lr": 1e-3 * (1 + i % 7), "train.grad_accum": 1 + i % 4}),
                           start_time=now - 10_000 + i, eval_every=250, rate=0.5 + (i % 5) / 5)
        if running:
            live = writer
        else:
            writer.close()
    return live


def gradio_encoder():
    """What Gradio does with a tick's outputs before they go out: each component's postprocess to JSON.
    Returns a function (table, view) -> bytes sent; imported and built here so that cost is not timed."""
    import gradio as gr

    from nanogpt_runner.viewer.curves import PLOTS
    from nanogpt_runner.viewer.dashboard import BARS, table_value

    plots = {name: gr.LinePlot(x="x", y="y", color="series") for name in PLOTS}
    bars = {name: gr.BarPlot(x="run", y="value") for name in BARS}
    frames = gr.Dataframe(), gr.Dataframe()
    swept = gr.ScatterPlot(x="value", y="objective", color="status")

    def encode(table, view) -> int:
        out = [plots[name].postprocess(view.curves[name]) for name in plots]
        out += [bars[name].postprocess(view.bars[name]) for name in view.bars]  # the drawn ones
        out += [frames[0].postprocess(table_value(table[0])), frames[1].postprocess(view.diff)]
        out += [swept.postprocess(panel.frame) for panel in view.swept]
        return sum(len(o.model_dump_json()) for o in out) + len(view.analysis)

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--keep", type=Path, default=None, help="build the folder here and keep it (reused next time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        live_dir = root / "2026-01-01" / f"run_{args.runs - 1:04d}"
        if (live_dir / "run.json").exists():  # --keep DIR from an earlier call: reuse it
            live = RunWriter(live_dir)
        else:
            live = build(root, args.runs, args.steps)
        live.update(status="running")
        size = sum(p.stat().st_size for p in root.rglob("metrics.jsonl")) / 1e6
        print(f"runs folder: {args.runs} runs x {args.steps} steps ({size:,.0f} MB of metrics), ready in "
              f"{time.perf_counter() - start:.1f} s")

        encode = gradio_encoder()
        start, cpu = time.perf_counter(), time.process_time()
        dashboard = Dashboard(RunStore(root), min_poll_s=0.0)
        dashboard.refresh()
        selected = dashboard.default_selection()
        table_args, compare_args = ("", []), (selected, "step", 0.6, False, 2.0)
        seen, table, view = dashboard.tick(None, table_args, compare_args)
        payload = encode(table, view)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        rows = sum(len(frame) for frame in view.curves.values())
        print(f"first full load: {first * 1000:,.0f} ms ({first_cpu * 1000:,.0f} ms CPU; {len(table[0])} table rows, "
              f"{len(selected)} runs compared, {rows:,} plotted points, {payload / 1e3:,.0f} kB to the browser)")

        grow, grow_cpu, idle = [], [], []
        step = args.steps
        for _ in range(10):
            for _ in range(10):
                step += 1
                live.log("train", step=step, tokens=step * 384, loss=1.5, lr=1e-3, grad_norm=1.0, tok_per_s=20000.0,
                         step_ms=10.0, mfu=0.05, mem_gb=0.5, peak_mem_gb=0.55, elapsed_s=step * 0.01)
            live.update(step=step)
            start, cpu = time.perf_counter(), time.process_time()
            seen, table, view = dashboard.tick(seen, table_args, compare_args)
            assert table is not None and view is not None, "a growing run must refresh the table and the plots"
            encode(table, view)
            grow.append(time.perf_counter() - start)
            grow_cpu.append(time.process_time() - cpu)
            start = time.perf_counter()
            seen, table, view = dashboard.tick(seen, table_args, compare_args)
            idle.append(time.perf_counter() - start)
        live.close()
        print(f"refresh while one run grows: median {statistics.median(grow) * 1000:,.0f} ms "
              f"({statistics.median(grow_cpu) * 1000:,.0f} ms CPU), max {max(grow) * 1000:,.0f} ms "
              f"(10 ticks, 10 new lines each)")
        print(f"idle refresh: median {statistics.median(idle) * 1000:,.1f} ms")
        print(f"targets: first load < 1000 ms -> {'ok' if first < 1 else 'MISSED'}; "
              f"refresh < 100 ms -> {'ok' if statistics.median(grow) < 0.1 else 'MISSED'}")


if __name__ == "__main__":
    main()
