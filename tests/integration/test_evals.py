"""eval.tasks end to end: recorded where the readers look (metrics lines, the tasks event, run.json's summary),
scored the same by an FSDP group (gloo, 2 processes), scored again after training by ``nanogpt-eval`` on that
run's sharded checkpoint, and scored the same by lm-evaluation-harness on the run exported with
``nanogpt-export --format hf``. Every other layout scores the same as one process in test_parallel.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from nanogpt_runner.runs.rundir import METRIC, find_runs

TASK = Path(__file__).parents[1] / "tasks" / "tiny_mc.jsonl"
STEPS = 2
SCORES = ("items", "acc", "acc_norm", "acc_token")  # counts of right answers: the same however the items are split


def _train(root: Path, corpus: Path, name: str, overrides: list[str]) -> Path:
    base = ["model=tiny", f"train.max_iters={STEPS}", "train.eval_interval=1", "train.eval_iters=1",
            "train.log_interval=1", "train.precision=fp32", "optimizer.warmup_iters=1", "run.progress=false",
            f"data.path={corpus}", f"data.cache_dir={root / 'cache'}", f"run.root={root / 'outputs'}",
            f"eval.tasks=[{TASK}]", "eval.task_interval=2", f"run.name={name}"]
    result = run_cli(base + overrides, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = [r for r in find_runs(root / "outputs") if r.name.endswith(f"_{name}")]
    return run_dir


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _task_events(run_dir: Path) -> dict[int, dict]:
    return {line["step"]: line["tasks"]["tiny_mc"] for line in _lines(run_dir) if line.get("event") == "tasks"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus_path) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("evals"), corpus_path


@pytest.fixture(scope="module")
def single(workspace) -> Path:
    root, corpus = workspace
    return _train(root, corpus, "single", ["train.batch_size=4", "train.grad_accum=2"])


def test_single_run_records_tasks_where_readers_look(single):
    events = _task_events(single)
    assert sorted(events) == [0, STEPS]  # the first evaluation, then every task_interval (step 1 is skipped)
    assert all(e["items"] == 12 and 0 <= e["acc_low"] <= e["acc"] <= e["acc_high"] <= 1 for e in events.values())
    evals = {line["step"]: line for line in _lines(single) if line["kind"] == "eval"}
    assert "task_acc" not in evals[1] and evals[STEPS]["task_acc"] == events[STEPS]["acc"]
    assert all(key in METRIC for line in evals.values() for key in line)  # every field is registered
    summary = json.loads((single / "run.json").read_text())["summary"]["tasks"]
    assert summary["results"]["tiny_mc"] == events[STEPS] and summary["interval"] == 2 and summary["seconds"] > 0


def test_an_fsdp_group_scores_the_same_and_so_does_its_sharded_checkpoint_after_training(workspace, single):
    root, corpus = workspace
    run_dir = _train(root, corpus, "fsdp", ["parallel=fsdp", "train.batch_size=2", "train.grad_accum=2"])
    ours, reference = _task_events(run_dir), _task_events(single)
    for step in reference:
        assert {k: ours[step][k] for k in SCORES} == {k: reference[step][k] for k in SCORES}, step
    result = subprocess.run([str(Path(sys.executable).parent / "nanogpt-eval"), str(run_dir), "--which", "latest",
                             "--task", str(TASK), "--json"], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)["tiny_mc"]
    assert {k: after[k] for k in SCORES} == {k: ours[STEPS][k] for k in SCORES}


def test_nanogpt_eval_refuses_a_missing_task_in_one_line(single, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "nanogpt-eval"), str(single), "--task",
                             str(tmp_path / "absent.jsonl")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: task {tmp_path / 'absent.jsonl'} does not exist; " \
                                                     "give a .jsonl or .parquet task file"


def test_lm_evaluation_harness_scores_the_export_the_same(workspace, single, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="the lm-eval extra: pip install -e '.[lm-eval]'")
    import torch

    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_model_state
    from nanogpt_runner.config.schema import ModelConfig
    from nanogpt_runner.data.tokenizers import from_description
    from nanogpt_runner.evals.harness import run_lm_eval
    from nanogpt_runner.evals.scoring import item_logliks, load_tasks
    from nanogpt_runner.model.gpt import GPT
    from nanogpt_runner.weights.export import export

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    export(single, tmp_path / "hf", "hf", which="latest", say=lambda _m: None)
    theirs = run_lm_eval(tmp_path / "hf", TASK, tmp_path / "lm_eval")
    ours = _task_events(single)[STEPS]
    assert (theirs["items"], theirs["acc"], theirs["acc_norm"]) == (ours["items"], ours["acc"], ours["acc_norm"])

    path, meta = resolve(single, "latest", announce=lambda _m: None)  # and item by item, ending by ending
    tokenizer, model_cfg = from_description(meta["vocab"]), ModelConfig(**meta["config"]["model"])
    model = GPT(model_cfg, tokenizer.vocab_size)
    model.load_state_dict(load_model_state(path, meta))
    items = load_tasks([str(TASK)], tokenizer, model_cfg.block_size, tmp_path, None, 1.0)["tiny_mc"]
    with torch.no_grad():
        logliks = item_logliks(items, lambda x: model.eval()(x)[0], 5, None, torch.device("cpu"))
    assert [len(ll) for ll in logliks] == [len(ll) for ll in theirs["logliks"]]
    flat = [torch.tensor([value for item in side for value in item]) for side in (logliks, theirs["logliks"])]
    assert torch.allclose(*flat, atol=1e-4), (flat[0] - flat[1]).abs().max()
