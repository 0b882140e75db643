"""``nanogpt-report RUNS_DIR``: the comparison as files (summary.csv, comparison.png) and as words."""

from __future__ import annotations

import csv

import pytest

from nanogpt_runner.report import main
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
    assert out.rstrip().endswith("comparison.png")


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
