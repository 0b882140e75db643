"""The GPU paths' arithmetic and flags, checked on a CPU with the CUDA queries faked: the plan's memory per rank
(each rank has its own GPU), the free memory and runtime margin a refusal compares with, FSDP accumulation's
unsharded gradients in the estimate, and TF32 set through both of torch's APIs."""

from __future__ import annotations

import math
import types

import pytest
import torch
from conftest import compose_config

from nanogpt_runner.perf import autotune, hardware, memory, plan

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _measure(cfg, vocab_size, device, setting, seconds):
    return autotune.StepTiming(10.0, steps=3, peak_bytes=2e6)


def test_on_gpus_the_plan_counts_one_rank_per_gpu_and_on_a_cpu_the_ranks_share(tmp_path, monkeypatch):
    cfg = compose_config(["model=tiny", "train.precision=fp32", "train.device=cuda", "train.compile=false",
                          "parallel=ddp", "parallel.nproc_per_node=8", f"data.cache_dir={tmp_path}"])
    monkeypatch.setattr(hardware, "device_caps", lambda *_: hardware.DeviceCaps(kind="cuda", bf16=True,
                                                                                 cuda_available=True))
    monkeypatch.setattr(hardware, "describe", lambda device: "NVIDIA H100 (faked)")  # the compile cache's key
    one_gpu = memory.estimate(cfg, 65, "cuda").total * 1.5  # one rank fits, eight would not
    result = plan.make_plan(cfg, 65, GPU, one_gpu, say=lambda _: None, measure=_measure)
    assert result.best.status == plan.MEASURED and not result.best.setting.recompute
    cpu = compose_config(["model=tiny", "train.precision=fp32", "train.device=cpu", "parallel=ddp",
                          "parallel.nproc_per_node=8", f"data.cache_dir={tmp_path}"])
    with pytest.raises(plan.PlanError, match="nothing fits"):
        plan.make_plan(cpu, 65, torch.device("cpu"), memory.estimate(cpu, 65, "cpu").total * 1.5,
                       say=lambda _: None, measure=_measure)


def test_a_gpu_offers_its_free_memory_less_the_runtime(monkeypatch):
    used = {0: 1e9, 1: 6e9}  # another process holds 6 GB of GPU 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=80e9))
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda i: used[i])
    assert hardware.available_memory("cuda") == 80e9 - 6e9 - hardware.CUDA_RUNTIME_MARGIN

    def no_nvml(_index):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "device_memory_used", no_nvml)
    assert hardware.available_memory("cuda") == 80e9 - hardware.CUDA_RUNTIME_MARGIN


def test_fsdp_accumulation_counts_every_unsharded_gradient():
    """Under set_requires_gradient_sync(False) each rank keeps an unsharded fp32 gradient of every parameter."""
    overrides = ["model=shakespeare", "train.precision=bf16", "parallel=fsdp", "train.batch_size=4"]
    once, accumulating = (memory.estimate(compose_config([*overrides, f"train.grad_accum={k}"]), 65, "cuda")
                          for k in (1, 4))
    shape = memory.Shape.of(compose_config(overrides).model, 65)
    every_block = memory.FP32 * shape.n_layer * shape.block_params()  # unsharded: more than one shard's gradients
    assert once.gradients < every_block <= accumulating.gradients
    assert math.isclose(accumulating.activations, once.activations)


def test_tf32_is_set_through_the_legacy_api_too(monkeypatch):
    """inductor's max-autotune asks torch.get_float32_matmul_precision(), which raises after only the new API."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    before = torch.get_float32_matmul_precision()
    try:
        hardware.configure_matmul(GPU, "fp32", tf32=True)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        hardware.configure_matmul(GPU, "fp32", tf32=False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("kind, elsewhere", [("cuda", True), ("cpu", False)])
def test_on_a_gpu_the_plan_times_in_another_process(kind, elsewhere, tmp_path, monkeypatch):
    """Its CUDA context and cached blocks end with that process (the launcher passes torchrun.in_rank_server),
    instead of staying beside rank 0; on a CPU it times here."""
    cfg = compose_config(["model=tiny", "train.precision=fp32", f"train.device={kind}", "train.plan=auto",
                          f"data.cache_dir={tmp_path}"])
    monkeypatch.setattr(plan, "plan_device", lambda _kind: torch.device(kind, 0) if kind == "cuda" else CPU)
    monkeypatch.setattr(plan, "available_memory", lambda _cfg: math.inf)
    monkeypatch.setattr(hardware, "device_caps", lambda *_: hardware.DeviceCaps(kind=kind, bf16=True,
                                                                                 cuda_available=kind == "cuda"))
    timed_here = plan.make_plan(cfg, 65, CPU, math.inf, say=lambda _: None, measure=_measure)
    monkeypatch.setattr(plan, "cached_plan", lambda *_args: timed_here)
    calls = []

    def in_a_child(function, *args):
        calls.append(function)
        return function(*args)

    planned, result, problems = plan.plan_run(cfg, 65, elsewhere=in_a_child)
    assert not problems and result.best.status == plan.MEASURED
    assert len(calls) == (1 if elsewhere else 0) and result is timed_here


def test_a_gpu_missing_from_the_table_is_measured_with_a_matmul_large_enough_to_fill_it(monkeypatch):
    sizes = []

    def timed(device, dtype, size, seconds):
        sizes.append(size)
        return 1e14

    monkeypatch.setattr(hardware, "_time_matmuls", timed)
    hardware.measure_matmul_flops(GPU, torch.bfloat16)
    hardware.measure_matmul_flops(CPU, torch.float32)
    assert sizes == [256, 8192, 1024]  # the GPU's probe, its measurement, the CPU's measurement
