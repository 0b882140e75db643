"""What the page shows, without a browser: the runs table, the comparison, and the timer's
"only what changed" rule."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from nanogpt_runner.viewer import dashboard as dashboard_module
from nanogpt_runner.viewer.curves import PLOTS
from nanogpt_runner.viewer.dashboard import BARS, Dashboard, export_plot_data, export_report
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.synthetic import config, write_run

TABLE, COMPARE = ("", []), None


@pytest.fixture
def runs(tmp_path):
    """Three finished runs (base, recompute, grad_accum=4) and one still running, newest last."""
    write_run(tmp_path / "base", 100, cfg=config(), mem_gb=1.0, start_time=1).close()
    write_run(tmp_path / "recompute", 100, cfg=config(**{"train.recompute": True}), mem_gb=0.7, start_time=2).close()
    write_run(tmp_path / "accum", 100, cfg=config(**{"train.grad_accum": 4}), start_time=3).close()
    live = write_run(tmp_path / "live", 30, status="running", cfg=config(**{"train.grad_accum": 4}), start_time=4)
    yield tmp_path, live
    live.close()


def dashboard_of(root) -> Dashboard:
    board = Dashboard(RunStore(root, min_rescan_s=0.0), min_poll_s=0.0)
    board.refresh()
    return board


def test_the_table_lists_runs_newest_first_with_only_the_settings_that_differ(runs):
    root, _ = runs
    frame, note = dashboard_of(root).table()
    assert list(frame.folder) == ["live", "accum", "recompute", "base"]
    assert list(frame.columns[:5]) == ["name", "status", "best val loss", "last train loss", "tokens/s"]
    settings = [c for c in frame.columns if c.startswith(("train.", "model.", "optimizer."))]
    assert settings == ["train.recompute", "train.grad_accum"]  # only what differs, after the outcome
    assert list(frame.columns).index("train.recompute") == list(frame.columns).index("stop") + 1
    assert "optimizer.lr" not in frame.columns and "sweep" not in frame.columns  # the same in every run
    assert frame.set_index("folder").loc["base", "stop"] == "finished its 100 steps"
    assert list(frame.status) == ["running", "completed", "completed", "completed"]
    assert frame.set_index("folder").loc["base", "peak mem (GB)"] == pytest.approx(1.1)
    assert note.startswith("4 of 4 runs match")


def test_the_table_filters_by_text_and_status(runs):
    root, _ = runs
    board = dashboard_of(root)
    assert list(board.table("accum")[0].folder) == ["accum"]
    assert list(board.table("", ["running"])[0].folder) == ["live"]
    assert board.table("no such run")[0].empty


def test_a_huge_root_shows_the_newest_rows_and_says_so(runs, monkeypatch):
    root, _ = runs
    monkeypatch.setattr(dashboard_module, "MAX_TABLE_ROWS", 2)
    frame, note = dashboard_of(root).table()
    assert len(frame) == 2 and "showing the newest 2 (type in the filter to narrow)" in note


def test_the_newest_runs_are_selected_by_default(runs):
    root, _ = runs
    assert dashboard_of(root).default_selection(2) == ["live", "accum"]


def test_compare_gives_curves_bars_config_diff_and_analysis(runs):
    root, _ = runs
    view = dashboard_of(root).compare(["base", "recompute"], x="tokens", smoothing=0.5, target=3.0)
    assert set(view.curves["loss"].series) == set(view.curves["val_loss"].series) == {"base", "recompute"}
    assert set(view.curves) == set(PLOTS) >= {"loss", "val_loss", "lr", "tok_per_s", "mem_gb"}  # a panel per metric
    assert list(view.bars["memory"].value) == pytest.approx([1.1, 0.77])
    assert list(view.diff.key) == ["train.recompute"]
    assert "train.recompute False → True (recompute vs base): peak memory 1.10 GB → 0.77 GB (-30%)" in view.analysis
    assert "fastest to val loss ≤ 3" in view.analysis


def test_every_curve_and_bar_lists_the_runs_in_one_order(runs):
    """The page colours series by order of appearance: one order everywhere is one colour per run."""
    root, _ = runs
    view = dashboard_of(root).compare(["recompute", "base", "accum"])
    for frame in [*view.curves.values(), *(bar.rename(columns={"run": "series"}) for bar in view.bars.values())]:
        assert list(dict.fromkeys(frame.series)) == ["accum", "base", "recompute"]


def test_plot_csv_is_exactly_what_each_plot_draws(runs, tmp_path):
    root, _ = runs
    view = dashboard_of(root).compare(["base", "recompute"], x="tokens", smoothing=0.5, log_y=True)
    paths = export_plot_data(view, "tokens", True, tmp_path)
    assert "to_target" not in view.bars  # no target: no time-to-target chart
    assert sorted(p.name for p in paths) == sorted([f"{n}.csv" for n in PLOTS] +
                                                   [f"bar_{n}.csv" for n in BARS if n != "to_target"])
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert list(loss.columns) == ["tokens", "log10 train loss", "run"]
    assert loss.to_numpy().tolist() == view.curves["loss"].dropna().to_numpy().tolist()


def test_compare_ignores_ids_that_are_not_runs_under_the_root(runs):
    root, _ = runs
    view = dashboard_of(root).compare(["../../etc/passwd", "base"])
    assert list(view.bars["time"].run) == ["base"]


def test_tick_recomputes_only_what_changed(runs):
    root, live = runs
    board = dashboard_of(root)
    compare_args = (["base", "live"], "step", 0.0, False, None)
    seen, table, view = board.tick(None, TABLE, compare_args)
    assert table is not None and view is not None  # first paint: everything

    seen, table, view = board.tick(seen, TABLE, compare_args)
    assert table is None and view is None  # nothing changed: nothing sent

    live.log("train", step=31, tokens=31 * 384, loss=1.0)
    seen, table, view = board.tick(seen, TABLE, compare_args)
    assert table is not None and view is not None  # the selected live run grew
    assert view.curves["loss"].query("series == 'live'").x.max() == 31

    seen, table, view = board.tick(seen, TABLE, (["base"], "step", 0.0, False, None))
    assert table is None and view is not None  # a new selection is a new comparison

    live.log("train", step=32, tokens=32 * 384, loss=1.0)
    seen, table, view = board.tick(seen, TABLE, (["base"], "step", 0.0, False, None))
    assert table is not None and view is None  # an unselected run grew: only the table changes


def test_export_writes_the_report_csv_and_png_for_the_selection(runs, tmp_path_factory):
    root, _ = runs
    board = dashboard_of(root)
    out = tmp_path_factory.mktemp("report")
    csv_path, png_path, settings_path = export_report(board.selected(["base", "recompute"]), out, target=3.0)
    assert settings_path.name == "hyperparameters.png"  # the two runs differ in a setting
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["run"] for r in rows] == ["base", "recompute"] and rows[1]["train.recompute"] == "True"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_group_by_a_config_key_orders_the_table_and_draws_one_mean_series_per_value(runs):
    root, _ = runs
    board = dashboard_of(root)
    frame, _ = board.table(group_by="train.recompute")
    assert frame.columns[list(frame.columns).index("stop") + 1] == "train.recompute"  # the first setting
    assert list(frame["train.recompute"]) == [False, False, False, True]  # rows ordered by the key's value
    view = board.compare(["base", "recompute", "accum"], group_by="train.recompute")
    loss = view.curves["loss"]
    assert list(dict.fromkeys(loss.series)) == ["train.recompute=False", "train.recompute=True"]
    solo = board.compare(["recompute"]).curves["loss"]  # a group of one run is that run's curve
    grouped = loss[loss.series == "train.recompute=True"]
    assert grouped.y.iloc[-1] == pytest.approx(solo.y.iloc[-1])
    assert list(view.bars["memory"].run) == ["train.recompute=False", "train.recompute=True"]
    assert view.bars["memory"].value.iloc[1] == pytest.approx(0.77)


def test_group_by_a_key_no_run_has_is_ignored(runs):
    root, _ = runs
    board = dashboard_of(root)
    assert set(board.compare(["base"], group_by="<script>").curves["loss"].series) == {"base"}
    assert "<script>" not in board.table(group_by="<script>")[0].columns
