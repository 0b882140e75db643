"""nanogpt-report writes where the command line says, never through a symlink, and never over a folder it did not
make unless told (--force): RUNS/report may have been planted by whoever made the runs folder."""

from __future__ import annotations

import json

import pytest

from nanogpt_runner.analysis import report
from nanogpt_runner.cli.report import main as report_main


def runs_folder(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        run = runs / f"run{seed}"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"id": f"r{seed}", "name": "tiny", "status": "completed",
                                                  "config": {"train": {"seed": seed}}}))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "tokens": 64 * s,
                                                               "loss": 3.0 / s}) + "\n" for s in (1, 2, 3)))
    return runs


def test_a_report_is_written_and_written_again(tmp_path, capsys):
    runs = runs_folder(tmp_path)
    report_main([str(runs)])
    report_main([str(runs)])  # its own folder: replaced
    assert (runs / "report" / report.CSV_NAME).read_text().startswith("run,")
    assert (runs / "report" / report.REPORT_MARK).is_file()


def test_a_planted_symlink_in_the_report_folder_is_refused(tmp_path, outside, capsys):
    runs = runs_folder(tmp_path)
    (runs / "report").mkdir()
    (runs / "report" / report.REPORT_MARK).write_text("")
    (runs / "report" / report.CSV_NAME).symlink_to(outside)
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit) as refused:
            report_main([str(runs), *force])
        assert refused.value.code == 2
    assert "holds a symlink" in capsys.readouterr().err
    assert outside.read_text() == "original\n"


def test_a_report_folder_that_is_a_symlink_is_refused(tmp_path, outside, capsys):
    runs = runs_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runs / "report").symlink_to(elsewhere)
    with pytest.raises(SystemExit):
        report_main([str(runs), "--force"])
    assert "is a symlink" in capsys.readouterr().err and not list(elsewhere.iterdir())


def test_a_folder_it_did_not_make_needs_force(tmp_path, capsys):
    runs = runs_folder(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / report.CSV_NAME).write_text("someone's numbers\n")
    with pytest.raises(SystemExit):
        report_main([str(runs), "--out", str(theirs)])
    assert "--force" in capsys.readouterr().err
    assert (theirs / report.CSV_NAME).read_text() == "someone's numbers\n"
    report_main([str(runs), "--out", str(theirs), "--force"])
    assert (theirs / report.CSV_NAME).read_text().startswith("run,")
    report_main([str(runs), "--out", str(tmp_path / "new" / "folder")])  # a new folder is made and claimed
    assert (tmp_path / "new" / "folder" / report.REPORT_MARK).is_file()


def test_the_study_files_replace_a_planted_symlink_never_write_through_it(tmp_path, outside):
    """A study sweep's card (study.md, study.csv, study.png) goes through fsutil like the rest of the report: a
    symlink planted at each name after the folder was claimed is replaced, the file it points at unchanged."""
    from nanogpt_runner.analysis.records import load_runs
    from nanogpt_runner.analysis.study_report import STUDY_FILES, write_study_files
    from nanogpt_runner.viewer.synthetic import config, write_run

    runs = tmp_path / "study"
    for seed in (0, 1):
        for arm, changes in (("baseline", {}), ("recompute", {"train.recompute": True})):
            cfg = config(**{"study.kind": "techniques", "study.arm": arm, "train.seed": seed, **changes})
            write_run(runs / f"{arm}_{seed}", 20, cfg=cfg).close()
    out = tmp_path / "report"
    report.claim_out_dir(out)
    for name in STUDY_FILES:
        (out / name).symlink_to(outside)
    written = write_study_files(load_runs(runs), out)
    assert [path.name for path in written] == list(STUDY_FILES)
    assert outside.read_text() == "original\n"
    assert all((out / name).is_file() and not (out / name).is_symlink() for name in STUDY_FILES)
    assert (out / "study.md").read_text().strip() and (out / "study.png").read_bytes().startswith(b"\x89PNG")
