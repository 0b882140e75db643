"""The memory estimate: what each rank holds, how close it is to the measured peak, and the refusal of a run
that would not fit (with what would)."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config, run_cli

from nanogpt_runner.launch import app as launch
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.perf import hardware, memory

VOCAB = 65


@pytest.mark.parametrize("overrides", [["model=baby"], ["model=tiny", "model.bias=true", "model.tie_weights=false"]])
def test_the_parameter_count_is_the_models(overrides):
    cfg = compose_config(overrides)
    model = GPT(cfg.model, VOCAB)
    real = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert memory.Shape.of(cfg.model, VOCAB).total_params() == real


def estimate(*overrides: str, precision: str = "fp32") -> memory.MemoryEstimate:
    return memory.estimate(compose_config(["model=shakespeare", *overrides]), VOCAB, "cpu", precision)


def test_each_layout_holds_its_share():
    single = estimate()
    fsdp = estimate("parallel=fsdp")
    assert fsdp.optimizer == pytest.approx(single.optimizer / 2)  # FSDP shards the optimizer state
    # DDP's gradients are views into its buckets (gradient_as_bucket_view): no second copy
    assert estimate("parallel=ddp").gradients == pytest.approx(single.gradients)
    tp = estimate("parallel=tp")
    assert tp.parameters < 0.6 * single.parameters and tp.activations < single.activations
    pp = estimate("parallel=pp", "parallel.pp_schedule=gpipe")
    assert pp.parameters < 0.6 * single.parameters and "pipeline stage" in pp.where


def test_recomputation_and_smaller_micro_batches_cut_activations_not_state():
    base = estimate("train.batch_size=16")
    recompute = estimate("train.batch_size=16", "train.recompute=true")
    split = estimate("train.batch_size=8", "train.grad_accum=2")
    assert recompute.activations < 0.5 * base.activations and split.activations < 0.6 * base.activations
    assert recompute.optimizer == split.optimizer == base.optimizer
    assert estimate("model.attention=math", "model.dropout=0").activations > estimate("model.dropout=0").activations


def test_a_gpus_fused_attention_keeps_no_attention_weights_under_dropout():
    """The CPU's SDPA falls back to explicit attention when dropout is on; a GPU's flash and memory-efficient
    kernels apply dropout inside the kernel (measured on an H200). Explicit attention keeps them everywhere."""
    def activations(device_kind: str, *overrides: str) -> float:
        cfg = compose_config(["model=shakespeare", *overrides])
        return memory.estimate(cfg, VOCAB, device_kind, "fp32").activations

    assert activations("cpu") > activations("cpu", "model.dropout=0") * 1.5
    assert activations("cuda") < activations("cuda", "model.dropout=0") * 1.2  # only the dropout masks
    assert activations("cuda", "model.attention=math") > activations("cuda") * 1.5


def test_auto_precision_is_estimated_at_the_larger_of_fp32_and_bf16():
    auto = estimate(precision="auto")
    assert auto.total == max(estimate(precision="fp32").total, estimate(precision="bf16").total)


@pytest.mark.parametrize("overrides", [
    ["model=shakespeare", "train.batch_size=4", "model.dropout=0"],
    ["model=shakespeare", "train.batch_size=4", "train.recompute=true"],
    ["model=baby", "train.batch_size=64"],
])
def test_the_estimate_is_within_20_percent_of_the_measured_peak(tmp_path, tiny_overrides, overrides):
    """On a CPU the measured peak is the resident set's growth over the process's baseline at the start of training
    (models big enough that the tensors, not the allocator's noise, make the peak)."""
    run_dir = tmp_path / "run"
    result = run_cli([*tiny_overrides, *overrides, "train.max_iters=2", "train.eval_interval=2", "train.eval_iters=1",
                      "train.ckpt_interval=0", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "run.json").read_text())
    est = record["memory_estimate"]
    measured = record["summary"]["peak_mem_gb"] - est["baseline_gb"]
    assert est["total_per_rank"] == pytest.approx(measured, rel=0.2)
    assert est["expected_peak_gb"] == pytest.approx(est["baseline_gb"] + est["total_per_rank"], abs=1e-3)


def test_a_run_that_does_not_fit_is_refused_with_what_would(monkeypatch, tiny_overrides):
    cfg = compose_config([*tiny_overrides, "model=shakespeare", "train.batch_size=16"])
    fits_with_half = memory.estimate(compose_config([*tiny_overrides, "model=shakespeare", "train.batch_size=8",
                                                     "train.grad_accum=2"]), VOCAB, "cpu").total
    monkeypatch.setattr(hardware, "available_memory", lambda kind: fits_with_half * 1.01)
    _, problems, data = launch.check(cfg, [])
    assert data is None and len(problems) == 1
    assert problems[0].startswith("memory: this run needs about")
    assert "train.batch_size=8 train.grad_accum=2" in problems[0] and "train.recompute=true" in problems[0]


def test_what_fits_keeps_the_global_batch():
    cfg = compose_config(["model=shakespeare", "train.batch_size=16", "train.grad_accum=1"])
    needed = memory.estimate(cfg, VOCAB, "cpu").total
    for option in memory.what_fits(cfg, VOCAB, "cpu", 0.7 * needed):
        values = dict(part.split("=") for part in option.split())
        assert int(values.get("train.batch_size", 16)) * int(values.get("train.grad_accum", 1)) == 16
