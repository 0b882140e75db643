"""``nanogpt-report RUNS_DIR``: the comparison as files (summary.csv, comparison.png) and as words."""

from __future__ import annotations

import csv
import statistics

import pytest

from nanogpt_runner.cli.report import main
from nanogpt_runner.viewer.synthetic import config, write_run


def test_report_writes_csv_and_png_next_to_the_runs_and_prints_the_analysis(tmp_path, capsys):
    runs = tmp_path / "outputs"
    write_run(runs / "base", 60, cfg=config(), start_time=1).close()
    write_run(runs / "accum", 60, cfg=config(**{"train.grad_accum": 4}), tok_per_s=15000.0, start_time=2).close()
    main([str(runs), "--target-loss", "3.0"])
    rows = list(csv.DictReader(open(runs / "report" / "summary.csv")))
    assert [(r["run"], r["status"], r["train.grad_accum"]) for r in rows] == [("base", "completed", "1"),
                                                                             ("accum", "completed", "4")]
    assert float(rows[1]["tok_per_s"]) == 15000.0 and rows[0]["time_to_target_s"] != ""
    assert (runs / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "train.grad_accum 1 → 4 (accum vs base)" in out and "tokens/s 20,000 → 15,000 (-25%)" in out
    assert "comparison.png" in out.splitlines()[-1]
    assert (runs / "report" / "hyperparameters.png").read_bytes()[:4] == b"\x89PNG"  # the runs differ in a setting


def test_runs_that_differ_only_by_seed_are_reported_as_a_group_with_mean_and_std(tmp_path, capsys):
    runs = tmp_path / "outputs"
    for seed, floor in enumerate([1.50, 1.55, 1.60]):
        write_run(runs / f"base{seed}", 60, cfg=config(**{"train.seed": seed}), loss_floor=floor,
                  start_time=seed).close()
    write_run(runs / "lr", 60, cfg=config(**{"optimizer.lr": 3e-3}), start_time=9).close()
    main([str(runs)])
    rows = list(csv.DictReader(open(runs / "report" / "summary.csv")))
    assert [r["group"] for r in rows] == ["optimizer.lr=0.001"] * 3 + ["optimizer.lr=0.003"]
    groups = list(csv.DictReader(open(runs / "report" / "groups.csv")))
    assert [(g["group"], g["runs"], g["seeds"]) for g in groups] == [("optimizer.lr=0.001", "3", "0 1 2"),
                                                                     ("optimizer.lr=0.003", "1", "1337")]
    losses = [float(r["best_val_loss"]) for r in rows[:3]]
    assert float(groups[0]["best_val_loss_mean"]) == pytest.approx(statistics.mean(losses))
    assert float(groups[0]["best_val_loss_std"]) == pytest.approx(statistics.stdev(losses))
    assert float(groups[0]["best_val_loss_min"]) == min(losses) and float(groups[1]["best_val_loss_std"]) == 0
    assert (runs / "report" / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "seed group optimizer.lr=0.001: best val loss" in out and "one seed: cannot tell" in out


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nope", "does not exist or is not a folder: pass the folder that holds your runs"),
    (lambda root: root, "no runs (folders with a run.json) under"),
    (lambda root: write_run(root / "a", 5).close() or root, "cannot write the report to"),
])
def test_bad_input_is_one_clear_message_and_exit_2(tmp_path, capsys, make, message):
    runs = make(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--out", str(blocker / "report")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
