"""nanogpt-sample: text from a run's best or latest checkpoint, the same text for the same seed, and one
clear error line (exit 2) for a prompt outside the vocabulary or a path without a checkpoint."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt_runner.checkpoint import folder as folders
from nanogpt_runner.checkpoint import state as ck
from nanogpt_runner.cli.sample import main, parse_args
from nanogpt_runner.config.schema import ModelConfig, OptimizerConfig
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.weights.sample import SampleError, SampleOptions, sample

VOCAB = tuple(sorted(set("\n !,.:?ABCDEHIMNORST abcdefghilmnorstuwy")))
MODEL = {"name": "tiny", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0,
         "bias": False, "tie_weights": True, "attention": "sdpa"}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with two checkpoints: step 1 (the best val loss) and step 2 (the latest), whose
    weights differ so a test can tell which one was used."""
    run = tmp_path / "run"
    for step, val_loss, seed in [(1, 1.0, 0), (2, 2.0, 1)]:
        torch.manual_seed(seed)
        model = GPT(ModelConfig(**MODEL), len(VOCAB))
        optimizer = build_optimizers(model, OptimizerConfig())
        ck.save_checkpoint(folders.checkpoint_dir(run), ck.TrainState(step, step * 64, val_loss), model, optimizer,
                           config={"model": MODEL}, vocab=VOCAB, val_loss=val_loss)
    return run


def test_same_seed_same_text_and_another_seed_another(run_dir):
    options = SampleOptions(prompt="ROMEO:", num_samples=2, max_new_tokens=30, seed=7)
    first, again = sample(run_dir, options), sample(run_dir, options)
    assert first == again and len(first) == 2 and first[0] != first[1]
    assert all(text.startswith("ROMEO:") and len(text) == 36 for text in first)
    assert sample(run_dir, SampleOptions(prompt="ROMEO:", max_new_tokens=30, seed=8)) != first[:1]


def test_best_and_latest_are_different_checkpoints(run_dir):
    best = sample(run_dir, SampleOptions(max_new_tokens=40, which="best"))
    latest = sample(run_dir, SampleOptions(max_new_tokens=40, which="latest"))
    step_2 = sample(folders.checkpoint_dir(run_dir) / "step_0000002", SampleOptions(max_new_tokens=40))
    assert best != latest and latest == step_2


def test_a_prompt_outside_the_vocabulary_names_the_characters(run_dir):
    with pytest.raises(SampleError, match=r"outside this vocabulary of \d+: 'Z' 'é'"):
        sample(run_dir, SampleOptions(prompt="éZé ROMEO"))


@pytest.mark.parametrize("args, message", [
    (["x", "temperature=hot"], "temperature='hot' is not a number"),
    (["x", "colour=red"], "unknown option colour="),
    (["x", "num_samples=0", "which=worst"], "num_samples=0 must be 1 or more; which=worst is unknown"),
    ([], "usage: nanogpt-sample"),
])
def test_bad_options_are_refused(args, message):
    with pytest.raises(SampleError, match=message):
        parse_args(args)
    assert parse_args(["x", "top_k=none", "temperature=0.5"])[1].top_k is None


def cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "nanogpt-sample"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_prints_samples_and_reports_errors_in_one_line(run_dir):
    result = cli(run_dir, "prompt=ROMEO:", "num_samples=2", "max_new_tokens=20", "seed=3")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2 and all(s.startswith("ROMEO:") for s in samples)
    assert samples == sample(run_dir, SampleOptions(prompt="ROMEO:", num_samples=2, max_new_tokens=20, seed=3))

    result = cli(run_dir, "prompt=Zoë")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip().splitlines() == [
        "error: the prompt has characters outside this vocabulary of 39: 'Z' 'ë'; remove or replace them"]


@pytest.mark.parametrize("where, message", [("missing", "does not exist"), (".", "has no checkpoint yet")])
def test_a_path_without_a_checkpoint_is_one_error_line(tmp_path, capsys, where, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / where)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_untrained_weights_are_finite(run_dir):
    path, meta = folders.resolve(run_dir, "best")
    assert meta["step"] == 1 and math.isclose(meta["val_loss"], 1.0)
    assert all(torch.isfinite(t).all() for t in ck.load_model_state(path, meta).values())


@pytest.mark.parametrize("claim, message", [
    ({"n_embd": 16384, "n_head": 16, "block_size": 65536}, "tensor(s) differ from the model it describes"),
    ({"n_layer": 10**9}, "n_layer=1000000000 but its weights hold"),
    ({"n_head": 3}, "n_head=3 does not divide n_embd=32"),
])
def test_a_meta_json_claiming_another_model_is_one_line_before_any_model_is_built(run_dir, capsys, claim, message):
    """A small checkpoint whose meta.json claims a huge model (the Sample tab's 1.8 GB per Generate) is refused
    from the tensors' shapes: the claimed model is never allocated."""
    import json
    import resource

    for step in folders.checkpoint_dir(run_dir).glob("step_*"):
        meta_file = step / folders.META_FILE
        meta = json.loads(meta_file.read_text())
        meta["config"]["model"].update(claim)
        meta_file.write_text(json.dumps(meta))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), "max_new_tokens=5"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and message in lines[0]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb < 500_000  # KB: no 25 GB model
