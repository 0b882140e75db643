"""A technique study end to end on the CPU, kept tiny: three arms (one of them one this machine cannot run) of
the tiny model over one seed; the sweep ends with the card, and nanogpt-report writes it as files."""

from __future__ import annotations

import csv

from conftest import run_cli

from nanogpt_runner.cli.report import main as report_main


def test_a_tiny_technique_study_prints_its_card_and_reports_it(tmp_path, tiny_overrides):
    sweep_dir = tmp_path / "study"
    overrides = [o for o in tiny_overrides if not o.startswith(("train.batch_size", "train.precision"))]
    result = run_cli(["-m", "+study=techniques", *overrides, "technique=baseline,accum2,fp16", "train.seed=0",
                      "train.max_iters=8", "train.eval_interval=4", "train.log_interval=2", "study.global_batch=4",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "technique card" in result.stdout
    assert "fp16: not measured (unsupported: train.precision=fp16 on the CPU" in result.stdout
    assert "accum2: " in result.stdout and "one baseline seed" in result.stdout
    report_main([str(sweep_dir), "--out", str(tmp_path / "report")])
    rows = {row["arm"]: row for row in csv.DictReader(open(tmp_path / "report" / "study.csv", encoding="utf-8"))}
    assert rows["accum2"]["status"] == "measured"
    assert rows["accum2"]["change"] == "train.batch_size 4 → 2, train.grad_accum 1 → 2"
    assert rows["fp16"]["status"] == "unsupported"
    assert (tmp_path / "report" / "study.png").stat().st_size > 0
    assert "| accum2 |" in (tmp_path / "report" / "study.md").read_text(encoding="utf-8")
