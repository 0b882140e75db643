"""The Study tab draws the study's card as plots with their intervals: each arm's tokens/s and memory ratios with
error bars and its val loss difference with its interval (the same figure as nanogpt-report's study.png)."""

from __future__ import annotations

from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from nanogpt_runner.viewer.showcase import write_showcase
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.viewer.studies import StudyBoard, study_choices


def test_the_study_tab_plots_ratios_and_loss_differences_with_their_intervals(tmp_path):
    write_showcase(tmp_path / "runs", steps=60).close()
    store = RunStore(tmp_path / "runs", min_rescan_s=0.0)
    store.poll()
    (label, sweep), = study_choices(store)
    _, view = StudyBoard(store).view(sweep)
    assert view.kind == "techniques" and isinstance(view.figure, Figure)
    speed, memory, loss = view.figure.axes[:3]
    assert "tokens/s ratio" in speed.get_title() and "memory" in memory.get_title() and "loss" in loss.get_title()
    for ax in (speed, memory, loss):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars and bars[0].has_xerr  # each arm's interval drawn as an error bar
    assert {t.get_text() for t in speed.get_yticklabels()} >= {"accum2", "recompute"}


def test_no_study_no_figure(tmp_path):
    store = RunStore(tmp_path, min_rescan_s=0.0)
    store.poll()
    _, view = StudyBoard(store).view(None)
    assert view.kind is None and view.figure is None
