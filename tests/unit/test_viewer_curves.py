"""Curves sent to the browser: bounded in size, faithful in shape, steady while a run grows."""

from __future__ import annotations

import numpy as np
import pytest

from nanogpt_runner.analysis.records import load_runs
from nanogpt_runner.viewer.curves import curve_frame, downsample, ema, panel, run_frame
from nanogpt_runner.viewer.synthetic import write_run


@pytest.mark.parametrize("n", [1, 10, 399, 400, 401, 5000, 123_457])
def test_downsampling_keeps_at_most_max_points_including_first_and_last(n):
    y = np.random.default_rng(0).normal(size=n)
    keep = downsample(y, 400)
    assert len(keep) <= 400
    assert keep[0] == 0 and keep[-1] == n - 1
    assert np.all(np.diff(keep) > 0)


def test_downsampling_keeps_spikes():
    y = np.zeros(10_000)
    y[1234], y[8765] = 50.0, -50.0
    keep = downsample(y, 100)
    assert 1234 in keep and 8765 in keep


def test_points_already_drawn_stay_when_the_run_grows():
    rng = np.random.default_rng(1)
    y = rng.normal(size=3000)
    before = downsample(y, 400)
    grown = downsample(np.concatenate([y, rng.normal(size=50)]), 400)
    complete = before[before < 3000 - 3000 % 16]  # points of whole buckets (bucket width 16 here)
    assert set(complete) <= set(grown)


def test_ema_is_debiased_and_lets_non_finite_values_through():
    values = np.array([4.0, 4.0, 4.0, np.nan, 2.0, np.inf])
    smooth = ema(values, 0.9)
    assert smooth[:3] == pytest.approx([4.0, 4.0, 4.0])  # no pull towards zero at the start
    assert np.isnan(smooth[3]) and np.isinf(smooth[5])
    assert 2.0 < smooth[4] < 4.0
    assert ema(values, 0.0) is values


def test_train_and_val_loss_are_panels_with_one_series_per_run(tmp_path):
    write_run(tmp_path / "a", 1000, eval_every=100).close()
    write_run(tmp_path / "b", 50).close()
    train, val = (curve_frame(load_runs(tmp_path), panel, x="tokens") for panel in ("loss", "val_loss"))
    assert set(train.series) == set(val.series) == {"a", "b"}
    assert (train.series == "a").sum() <= 400
    assert train[train.series == "a"].x.max() == 1000 * 12 * 32  # tokens of the last step
    assert len(val[val.series == "a"]) == 10  # an eval every 100 steps


def test_every_panel_lists_every_run_in_one_order_so_each_run_has_one_colour(tmp_path):
    for name in ("b", "a", "c"):
        write_run(tmp_path / name, 20).close()
    runs = sorted(load_runs(tmp_path), key=lambda run: run.label, reverse=True)  # c, b, a: any order in
    runs[1].metrics.eval = []  # b has no eval line yet: it keeps its place in the val panel
    val = panel([run_frame(run, "val_loss") for run in runs], runs)
    assert list(dict.fromkeys(val.series)) == ["a", "b", "c"]
    assert val[val.series == "b"][["x", "y"]].isna().all(axis=None)


def test_log_y_plots_log10_of_the_loss(tmp_path):
    write_run(tmp_path / "a", 20).close()
    [run] = load_runs(tmp_path)
    plain, logged = run_frame(run, "loss"), run_frame(run, "loss", log_y=True)
    assert logged.y.to_numpy() == pytest.approx(np.log10(plain.y.to_numpy()))


def test_a_diverged_run_is_marked_in_its_series_name_not_left_as_a_silent_gap(tmp_path):
    write_run(tmp_path / "a", 40, status="failed", diverge_at=25, eval_every=10).close()
    [run] = load_runs(tmp_path)
    frame = run_frame(run, "loss")
    assert set(frame.series) == set(run_frame(run, "lr").series) == {"a ✗ diverged"}  # one name: one colour
    assert np.isfinite(frame.y).all() and frame.x.max() < 25


def test_a_run_whose_curves_are_not_loaded_draws_nothing(tmp_path):
    write_run(tmp_path / "a", 5).close()
    [run] = load_runs(tmp_path)
    run.metrics = None
    assert run_frame(run, "lr").empty
