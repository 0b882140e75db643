"""A resume trusts the run folder for nothing but the training it continues: a crafted checkpoint config cannot
choose a destination, a process count or a side channel, cannot be interpolated, and a run folder holding a
symlink is refused before anything is written into it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from nanogpt_runner.checkpoint.folder import FORMAT, VERSION, read_meta
from nanogpt_runner.checkpoint.resume_plan import plan_resume
from nanogpt_runner.config.saved import RESUMED, interpolation_problem, load_saved_yaml
from nanogpt_runner.config.schema import CONF_DIR
from nanogpt_runner.errors import CheckpointError

TINY = ["model=tiny", "train.max_iters=20", "optimizer.lr=0.003", "train.seed=7", "run.progress=false"]


def crafted_run(tmp_path: Path, tamper=lambda config: None) -> Path:
    """A run folder with one checkpoint whose meta.json holds ``tamper``ed config (no tensors: planning reads
    the meta only)."""
    config = OmegaConf.to_container(compose_config(TINY), resolve=True)
    tamper(config)
    folder = tmp_path / "run" / "checkpoints" / "step_0000010"
    folder.mkdir(parents=True)
    meta = {"format": FORMAT, "version": VERSION, "step": 10, "config": config, "files": {}}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder.parent / "latest").write_text("step_0000010\n")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "interrupted", "config": config}))
    return tmp_path / "run"


def plan(tmp_path: Path, run: Path, *overrides: str):
    overrides = [f"resume={run}", "train.max_iters=30", *overrides]
    return plan_resume(compose_config(overrides), tmp_path / "fresh", overrides, CONF_DIR, announce=lambda _: None)


def test_a_resume_takes_the_training_and_nothing_else_from_the_checkpoint(tmp_path):
    def hostile(config: dict) -> None:
        config["logger"]["tensorboard"].update(enabled=True, dir="../../../../outside")
        config["logger"]["mlflow"].update(enabled=True, tracking_uri="http://attacker.example:5000")
        config["data"].update(num_proc=32, cache_dir=str(tmp_path / "elsewhere"))
        config["run"].update(root=str(tmp_path / "elsewhere"), notes="planted", progress=True)
        config["train"].update(device="cuda", plan="auto")
        config["parallel"].update(threads_per_rank=64, max_restarts=99)

    resumed = plan(tmp_path, crafted_run(tmp_path, hostile)).cfg
    defaults = compose_config(["model=tiny"])
    for key in ("logger", "data.num_proc", "data.cache_dir", "run.root", "run.notes", "train.device", "train.plan",
                "parallel.threads_per_rank", "parallel.max_restarts"):
        assert OmegaConf.select(resumed, key) == OmegaConf.select(defaults, key), key
    # what defines the training is the checkpoint's; the command line's fields are the command line's
    assert (resumed.optimizer.lr, resumed.train.seed, resumed.train.max_iters) == (0.003, 7, 30)
    assert resumed.model.n_layer == defaults.model.n_layer and resumed.run.progress is True  # default
    assert set(RESUMED) <= {"model", "optimizer", "data", "parallel", "train", "run"}


def test_the_command_line_still_chooses_destinations_on_a_resume(tmp_path):
    resumed = plan(tmp_path, crafted_run(tmp_path), f"data.cache_dir={tmp_path / 'cache'}", "logger=[tensorboard]",
                   "run.notes=mine").cfg
    assert resumed.data.cache_dir == str(tmp_path / "cache") and resumed.logger.tensorboard.enabled
    assert resumed.run.notes == "mine" and resumed.optimizer.lr == 0.003


@pytest.mark.parametrize("where", ["run.notes", "logger.mlflow.tracking_uri", "optimizer.betas"])
def test_a_saved_interpolation_is_refused_not_resolved(tmp_path, monkeypatch, where):
    monkeypatch.setenv("NANOGPT_TEST_SECRET", "hunter2")
    section = where.split(".")[0]

    def interpolate(config: dict) -> None:
        node = config
        for part in where.split(".")[:-1]:
            node = node[part]
        node[where.split(".")[-1]] = "${oc.env:NANOGPT_TEST_SECRET}" if section != "optimizer" else [
            0.9, "${oc.env:NANOGPT_TEST_SECRET}"]

    run = crafted_run(tmp_path, interpolate)
    with pytest.raises(CheckpointError, match="never interpolated") as refused:
        plan(tmp_path, run / "checkpoints" / "step_0000010")
    assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match="never interpolated"):
        read_meta(run / "checkpoints" / "step_0000010")


@pytest.mark.parametrize("name", ["config.yaml", ".lock", "metrics.jsonl", "train.log", "checkpoints/latest"])
def test_a_run_folder_holding_a_symlink_is_refused_before_a_write(tmp_path, name):
    outside = tmp_path / "bashrc"
    outside.write_text("original\n")
    run = crafted_run(tmp_path)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    with pytest.raises(CheckpointError, match=f"holds a symlink, {run / name} ->") as refused:
        plan(tmp_path, run)
    assert "\n" not in str(refused.value)
    assert outside.read_text() == "original\n" and not (tmp_path / "fresh").exists()


def test_a_saved_config_yaml_is_loaded_unresolved_and_never_through_a_link(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_TEST_SECRET", "hunter2")
    good = tmp_path / "config.yaml"
    good.write_text("model:\n  n_layer: 2\nrun:\n  notes: plain\n")
    assert load_saved_yaml(good) == {"model": {"n_layer": 2}, "run": {"notes": "plain"}}
    (tmp_path / "bad.yaml").write_text("run:\n  notes: ${oc.env:NANOGPT_TEST_SECRET}\n")
    with pytest.raises(ValueError, match="never interpolated") as refused:
        load_saved_yaml(tmp_path / "bad.yaml")
    assert "hunter2" not in str(refused.value)
    (tmp_path / "link.yaml").symlink_to(good)
    with pytest.raises(ValueError, match="not a regular file"):
        load_saved_yaml(tmp_path / "link.yaml")
    assert interpolation_problem({"a": [{"b": "x"}]}, "f") is None
    assert "a[0].b" in interpolation_problem({"a": [{"b": "${x}"}]}, "f")
    assert os.environ["NANOGPT_TEST_SECRET"] == "hunter2"
