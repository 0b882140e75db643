"""The training loop: gradient accumulation that trains exactly like the larger batch, and the metrics
lines a run leaves (the schedule and the optimizers: test_optim.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.perf import hardware
from nanogpt_runner.runs.rundir import RunReader, RunWriter
from nanogpt_runner.train.loop import train


def train_in_process(tiny_overrides, run_dir, *extra):
    cfg = compose_config(tiny_overrides + list(extra))
    writer = RunWriter(run_dir)
    summary = train(cfg, run_dir, prepare(cfg.data), writer)
    writer.close()
    reader = RunReader(run_dir)
    reader.refresh()
    return summary, reader.metrics


def test_accumulation_trains_exactly_like_the_larger_batch(tmp_path, tiny_overrides):
    """Batch 8 in one pass and batch 4 x 2 micro-steps see the same sequences and take the same steps."""
    common = ["train.log_interval=1", "train.max_iters=8"]
    _, whole = train_in_process(tiny_overrides, tmp_path / "a", *common, "train.batch_size=8", "train.grad_accum=1")
    _, accumulated = train_in_process(tiny_overrides, tmp_path / "b", *common, "train.batch_size=4",
                                      "train.grad_accum=2")
    for a, b in zip(whole.train, accumulated.train, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert whole.train[-1]["tokens"] == accumulated.train[-1]["tokens"] == 8 * 8 * 32


def test_a_run_logs_train_and_eval_lines(tmp_path, tiny_overrides):
    summary, metrics = train_in_process(tiny_overrides, tmp_path)
    assert [r["step"] for r in metrics.train] == [5, 10, 15, 20]
    assert [r["step"] for r in metrics.eval] == [0, 10, 20]
    line = metrics.train[-1]
    for key in ("tokens", "loss", "lr", "grad_norm", "tok_per_s", "step_ms", "mfu", "mem_gb", "peak_mem_gb",
                "elapsed_s", "time"):
        assert math.isfinite(line[key]), key
    assert metrics.eval[-1]["val_loss"] < metrics.eval[0]["val_loss"]  # it learns
    assert summary.best_val_loss == min(r["val_loss"] for r in metrics.eval)
    assert summary.steps == 20 and summary.tokens == 20 * 4 * 32


def test_an_untyped_copy_of_the_config_trains_like_the_composed_one(tmp_path, tiny_overrides):
    """A plan's winner (plan.apply) and the benchmark scripts hand train() a resolved copy without the schema."""
    _, composed = train_in_process(tiny_overrides, tmp_path / "a")
    cfg = compose_config(tiny_overrides)
    untyped = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    writer = RunWriter(tmp_path / "b")
    train(untyped, tmp_path / "b", prepare(cfg.data), writer)
    writer.close()
    reader = RunReader(tmp_path / "b")
    reader.refresh()
    assert [r["loss"] for r in reader.metrics.train] == [r["loss"] for r in composed.train]


def test_same_seed_same_run(tmp_path, tiny_overrides):
    _, first = train_in_process(tiny_overrides, tmp_path / "a")
    _, second = train_in_process(tiny_overrides, tmp_path / "b")
    assert [r["loss"] for r in first.train] == [r["loss"] for r in second.train]
    _, other = train_in_process(tiny_overrides, tmp_path / "c", "train.seed=7")
    assert [r["loss"] for r in other.train] != [r["loss"] for r in first.train]


def test_bf16_autocast_trains_close_to_fp32(tmp_path, tiny_overrides):
    _, fp32 = train_in_process(tiny_overrides, tmp_path / "a")
    _, bf16 = train_in_process(tiny_overrides, tmp_path / "b", "train.precision=bf16")
    assert bf16.train[-1]["loss"] == pytest.approx(fp32.train[-1]["loss"], rel=0.02)
    assert bf16.train[-1]["loss"] != fp32.train[-1]["loss"]  # it really ran in bf16


def test_compile_traces_the_blocks_and_trains_like_eager(tmp_path, tiny_overrides):
    """train.compile=true runs every block through torch.compile (its first step takes seconds)."""
    import torch._dynamo

    common = ["train.max_iters=3", "train.log_interval=1", "train.eval_interval=3"]
    _, eager = train_in_process(tiny_overrides, tmp_path / "a", *common)
    torch._dynamo.reset()
    _, compiled = train_in_process(tiny_overrides, tmp_path / "b", *common, "train.compile=true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for a, b in zip(eager.train, compiled.train, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_console_lines_off_a_terminal_are_printed_whole(tmp_path, capsys):
    """Piped to a file or a log collector, a long line stays one line (rich would wrap it at 80 columns)."""
    from nanogpt_runner.console import RunConsole

    long_line = "shakespeare: 10.65M parameters, fp32 on single, NVIDIA H200, data shakespeare_char, run dir " + \
        str(tmp_path / "a" / "long" / "path")
    with RunConsole(open(tmp_path / "train.log", "a", encoding="utf-8"), total_steps=10, live=True) as console:
        console.line(long_line)
        console.progress(5, 5, "loss 2.0000 | 1,000 tok/s")
    assert capsys.readouterr().out.splitlines() == [long_line, "step 5/10 | loss 2.0000 | 1,000 tok/s"]
    assert long_line in (tmp_path / "train.log").read_text()


def test_a_peak_read_low_on_a_busy_machine_is_measured_again_so_mfu_stays_below_one(tmp_path, tiny_overrides):
    """A cached CPU peak below what the model itself computed is proof it was read on a busy machine: the run
    measures it again, and neither its summary nor the cache keeps the impossible figure."""
    cache = tmp_path / "cache"  # tiny_overrides' data cache
    key = hardware._peak_key(torch.device("cpu"), "fp32")
    (cache / hardware.PEAK_FILE).write_text(json.dumps({key: 1e6}))  # 1 MFLOP/s: any run beats it
    summary, _ = train_in_process(tiny_overrides, tmp_path / "run")
    assert 0 < summary.mfu < 1
    assert json.loads((cache / hardware.PEAK_FILE).read_text())[key] > 1e9
