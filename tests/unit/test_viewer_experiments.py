"""The viewer's answers to experiment questions: seed groups (mean ± std in the runs table, the Compare tab
and the API), why each run stopped, FLOPs as an x axis, and a sweep's settings against its objective."""

from __future__ import annotations

import math
import os
import statistics

import pandas as pd
import pytest
from matplotlib.figure import Figure

from nanogpt_runner.analysis.records import load_runs, summarize
from nanogpt_runner.viewer.dashboard import Dashboard
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import config, write_run

FLOPS_PER_TOKEN = 1000.0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Three seeds of one configuration, one run of another (stopped at a target), and a failed one."""
    root = tmp_path_factory.mktemp("runs")
    for seed, floor in enumerate([1.50, 1.55, 1.60]):
        writer = write_run(root / f"base{seed}", 60, cfg=config(**{"train.seed": seed}), loss_floor=floor,
                           start_time=seed)
        writer.update(flops_per_token=FLOPS_PER_TOKEN)
        writer.close()
    writer = write_run(root / "lr", 60, cfg=config(**{"optimizer.lr": 3e-3, "train.target_loss": 1.5}), start_time=5)
    writer.update(summary={**writer.record["summary"], "stop_reason": "target_loss"})
    writer.close()
    write_run(root / "broken", 10, cfg=config(**{"optimizer.lr": 1.0}), status="failed", start_time=6).close()
    for job, rate in enumerate([0.5, 1.5]):  # a sweep: job 1 learns faster, so it has the best objective
        write_run(root / "sweep" / str(job), 60, cfg=config(**{"optimizer.lr": 1e-3 * (job + 5)}), rate=rate,
                  sweep={"dir": str(root / "sweep"), "job": job}, start_time=7 + job).close()
    return root


def dashboard_of(root) -> Dashboard:
    board = Dashboard(RunStore(root, min_rescan_s=0.0), min_poll_s=0.0)
    board.refresh()
    return board


def test_the_runs_table_shows_each_seed_groups_mean_and_std_and_why_runs_stopped(root):
    frame = dashboard_of(root).table()[0].set_index("folder")
    group = frame.loc["base0", "seed group val loss"]
    assert group.endswith("(3 seeds)") and " ± " in group
    assert frame.loc["base1", "seed group val loss"] == group and pd.isna(frame.loc["lr", "seed group val loss"])
    assert frame.loc["lr", "stop"] == "stopped: target 1.5 reached at step 60"


def test_compare_lists_the_groups_and_draws_their_bands_and_the_settings_against_the_objective(root):
    view = dashboard_of(root).compare(["base0", "base1", "base2", "lr", "broken"], x="tokens")
    groups = view.groups.set_index("group")
    assert list(groups.runs) == [3] and groups.iloc[0].seeds == "0 1 2"  # one run is not a group
    losses = [summarize(run)["best_val_loss"] for run in load_runs(root) if run.id.startswith("base")]
    expected = f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
    assert groups.iloc[0]["best val loss mean ± std"] == expected
    assert isinstance(view.seed_plot, Figure)
    lr = {panel.key: panel for panel in view.swept}["optimizer.lr"]  # swept settings: a panel per key, no matplotlib
    assert lr.x_title == "log10 optimizer.lr" and lr.y_title == "val_loss"  # 1e-3 .. 1.0: a wide span
    rows = lr.frame.set_index("run")
    assert rows.loc["lr", "value"] == pytest.approx(math.log10(3e-3)) and rows.loc["broken", "value"] == 0.0
    assert rows.loc["broken", "status"] == "failed: no value"  # no final objective: drawn above the others
    assert rows.loc["broken", "objective"] > rows.drop("broken").objective.max()
    assert [panel.key for panel in view.swept][-1] == "train.seed"  # the seed is noise: last
    assert "seed group" in view.analysis and "one seed: cannot tell" in view.analysis


def test_flops_is_an_x_axis(root):
    curve = dashboard_of(root).compare(["base0"], x="flops").curves["loss"]
    tokens = dashboard_of(root).compare(["base0"], x="tokens").curves["loss"]
    assert list(curve.x) == pytest.approx([t * FLOPS_PER_TOKEN for t in tokens.x])


def test_the_api_returns_seed_groups_with_mean_and_std(root):
    from gradio_client import Client

    from nanogpt_runner.viewer.app import free_port, serve

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo, url = serve(root, port=free_port("127.0.0.1", 7890), refresh_s=1.0, token=None)  # as --no-token
    try:
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        rows = client.predict(["base0", "base1", "base2", "lr"], api_name="/groups")
    finally:
        demo.close()
    assert [(r["runs"], r["seeds"]) for r in rows] == [(["base0", "base1", "base2"], [0, 1, 2])]  # groups of 2+
    losses = [summarize(run)["best_val_loss"] for run in load_runs(root) if run.id.startswith("base")]
    spread = rows[0]["best_val_loss"]
    assert spread["n"] == 3 and spread["mean"] == pytest.approx(statistics.mean(losses))
    assert spread["std"] == pytest.approx(statistics.stdev(losses)) and spread["min"] == pytest.approx(min(losses))


def test_the_api_documents_its_fields(root):
    from gradio_client import Client

    from nanogpt_runner.viewer.app import free_port, serve

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo, url = serve(root, port=free_port("127.0.0.1", 7890), refresh_s=1.0, token=None)
    try:
        api = Client(url, verbose=False, download_files=False, analytics_enabled=False).view_api(
            print_info=False, return_format="dict")["named_endpoints"]
    finally:
        demo.close()
    runs = api["/runs"]["returns"][0]["python_type"]["type"]
    assert all(field in runs for field in ("best_val_loss: None | float", "tok_per_s", "settings", "stop"))
    assert "best_val_loss: dict(n: int" in api["/groups"]["returns"][0]["python_type"]["type"]
    assert [p["parameter_name"] for p in api["/analysis"]["parameters"]] == ["run_ids", "target_loss"]


def test_the_runs_table_stars_each_sweeps_best_job_by_its_objective(root):
    frame = dashboard_of(root).table()[0].set_index("folder")
    assert frame.loc["sweep/1", "objective"].startswith("★ ") and frame.loc["sweep/1", "objective"].endswith(
        "(val_loss)")
    assert not frame.loc["sweep/0", "objective"].startswith("★") and pd.isna(frame.loc["lr", "objective"])


def test_figures_are_drawn_again_only_when_what_they_show_changed(root):
    board = dashboard_of(root)
    ids = ["base0", "base1", "base2", "lr"]
    first, again = board.compare(ids), board.compare(ids)
    assert again.seed_plot is first.seed_plot and again.figure_key == first.figure_key
    assert board.compare(ids, x="tokens").seed_plot is not first.seed_plot  # another x axis: drawn again


def test_figures_survive_labels_written_to_break_them(tmp_path):
    """Run folders are hostile: a "$" would start matplotlib's mathtext, and a malformed formula fails a figure."""
    import io

    from nanogpt_runner.analysis.figures import hyperparameter_figure, seed_band_figure

    for seed in range(2):
        write_run(tmp_path / f"a{seed}", 30, cfg=config(**{"train.seed": seed, "run.group": "$\\frac{$",
                                                          "data.name": "$^_{$" * 40}), start_time=seed).close()
    write_run(tmp_path / "b", 30, cfg=config(**{"data.name": "$}$"}), start_time=3).close()
    runs = load_runs(tmp_path)
    for figure in (seed_band_figure(runs), hyperparameter_figure(runs)):
        figure.savefig(io.BytesIO(), format="png")
