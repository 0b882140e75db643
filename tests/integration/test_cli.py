"""``nanogpt-run`` as a user runs it: a tiny end-to-end run and the files it leaves, and bad input that
gets one clear message, a non-zero exit, no traceback and no run directory claiming anything."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from nanogpt_runner.runs.rundir import find_runs, read_run


def test_a_tiny_run_end_to_end(tmp_path, tiny_overrides):
    result = run_cli(tiny_overrides + ["run.name=smoke"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = find_runs(tmp_path / "outputs")
    assert run_dir.name.endswith("_smoke")
    assert {p.name for p in run_dir.iterdir()} >= {"run.json", "metrics.jsonl", "config.yaml", "train.log", ".hydra"}
    run = read_run(run_dir)
    assert run["status"] == "completed" and run["name"] == "smoke"
    assert run["dataset"]["name"] == "shakespeare_char" and run["n_params"] > 0
    assert run["precision"] == "fp32" and run["device"] == "cpu" and run["world_size"] == 1
    assert "model=tiny" in run["overrides"] and run["config"]["model"]["n_embd"] == 32
    assert run["end_time"] >= run["start_time"] and run["summary"]["best_val_loss"] < 4.2
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("train") == 4 and kinds.count("eval") == 3
    assert "data:" not in (run_dir / "config.yaml").read_text().split("model:")[0]  # resolved yaml, model first
    assert "eval step 20" in (run_dir / "train.log").read_text()
    assert "best val loss" in result.stdout and "tokens/s" in result.stdout


def test_an_invalid_config_is_refused_before_anything_runs(tmp_path, tiny_overrides):
    result = run_cli(tiny_overrides + ["model.n_embd=33", "optimizer.lr=0"], cwd=tmp_path)
    assert result.returncode == 2
    assert "model.n_embd=33" in result.stderr and "optimizer.lr=0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not any((tmp_path / "outputs").rglob("*"))  # not even an empty date folder


@pytest.mark.parametrize("override, words", [
    ("train.max_iter=5", "Key 'max_iter' not in 'TrainConfig'"),
    ("train.precision=fp8", "Invalid value 'fp8', expected one of [fp32, bf16, fp16, auto]"),
    ("model=nosuch", "model=nosuch is not a member of the model group: use one of baby, gpt2, shakespeare, tiny"),
    ("hydra/launcher=nosuch", "hydra/launcher=nosuch is not a member of the hydra/launcher group: use one of basic, "),
    ("logger=[tensorboard,nosuch]",
     "logger=nosuch is not a member of the logger group: use one of mlflow, tensorboard, trackio, wandb"),
])
def test_an_unknown_key_or_choice_is_refused_by_hydra_in_one_line(tmp_path, tiny_overrides, override, words):
    result = run_cli(tiny_overrides + [override], cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_key_added_with_plus_that_the_schema_lacks_is_refused_before_any_run_dir(tmp_path, tiny_overrides):
    """Hydra's ``+`` forces a key even into a schema-typed node; validation names it instead of the worker
    failing with a traceback after the run directory was made."""
    result = run_cli(tiny_overrides + ["+model.something=1"], cwd=tmp_path)
    assert result.returncode == 2 and "model.something is not a setting" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not any((tmp_path / "outputs").rglob("*"))


def test_a_text_file_that_is_not_utf8_is_refused_with_the_fix(tmp_path, tiny_overrides):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf8 " * 100)
    result = run_cli(tiny_overrides + ["data=text_file", f"data.path={bad}"], cwd=tmp_path)
    assert result.returncode == 2 and "not UTF-8" in result.stderr and "Traceback" not in result.stderr
    assert list(find_runs(tmp_path / "outputs")) == []
