"""The CUDA paths, on real GPUs: every layout equals the single process on NCCL (bf16 tolerances), fp16 with
its GradScaler (one GPU and DDP), each rank's memory peak, the memory estimate against the CUDA peak, MFU
against the published peak table, compile + recompute + FSDP together, precision and TF32 by compute
capability, pinned batches, the probe's timing of queued steps, this rank's CUDA RNG, a CPU run that never
touches CUDA, and SIGUSR2 -> checkpoint -> resume.

Marked ``gpu``: skipped, with the reason, where torch sees no CUDA GPU (or too few for the layout).
``scripts/gpu_check.sh`` runs them on a GPU machine. Asking ``torch.cuda`` whether GPUs exist creates no
CUDA context, so collecting this file on a CPU machine costs nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import run_cli
from test_parallel import LAYOUTS, _curves, _train
from test_parallel_endings import _overrides, preempt_and_resume

from nanogpt_runner.distributed.parallelize import LAYOUT_FILE
from nanogpt_runner.perf import autotune, hardware
from nanogpt_runner.runs.rundir import read_run

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU; none is visible to torch on this machine")]
BF16_REL = 2e-2  # bf16 runs under different layouts reduce in different orders: agree to about 1%


def needs_gpus(count: int):
    return pytest.mark.skipif(GPUS < count, reason=f"needs {count} CUDA GPUs, this machine has {GPUS}")


def _gpu(precision: str = "bf16") -> list[str]:
    return ["train.device=cuda", f"train.precision={precision}"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus_path):
    return tmp_path_factory.mktemp("gpu"), corpus_path


@pytest.fixture(scope="module")
def bf16_reference(workspace):
    return _curves(_train(*workspace, "single_bf16", _gpu() + ["train.batch_size=4", "train.grad_accum=2"]))


def _assert_close_curves(curves, reference, rel: float) -> None:
    for got, want in zip(curves, reference, strict=True):
        assert sorted(got) == sorted(want)
        for step, loss in want.items():
            assert math.isclose(got[step], loss, rel_tol=rel), (step, got[step], loss)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_layout_matches_single_on_nccl(name, workspace, bf16_reference):
    overrides, world, _check_shapes = LAYOUTS[name]
    if GPUS < world:
        pytest.skip(f"layout {name} needs {world} CUDA GPUs, this machine has {GPUS}")
    run_dir = _train(*workspace, f"{name}_nccl", overrides + _gpu())
    run = read_run(run_dir)
    assert run["status"] == "completed" and run["device"] == "cuda" and run["precision"] == "bf16"
    _assert_close_curves(_curves(run_dir), bf16_reference, BF16_REL)


def test_fp16_with_its_grad_scaler_on_one_gpu(workspace):
    run_dir = _train(*workspace, "fp16_single", _gpu("fp16") + ["train.batch_size=4", "train.grad_accum=2"])
    train, _ = _curves(run_dir)
    assert all(math.isfinite(loss) for loss in train.values()) and train[max(train)] < train[1]


@needs_gpus(2)
def test_fp16_ddp_equals_fp16_single(workspace):
    single = _curves(_train(*workspace, "fp16_ref", _gpu("fp16") + ["train.batch_size=4", "train.grad_accum=2"]))
    ddp = _curves(_train(*workspace, "fp16_ddp", _gpu("fp16") + ["parallel=ddp", "train.batch_size=2",
                                                                 "train.grad_accum=2"]))
    _assert_close_curves(ddp, single, BF16_REL)


@needs_gpus(2)
def test_fsdp_peak_memory_per_rank_is_below_the_single_gpu_peak(workspace):
    """Parameters, gradients and AdamW state dominate at this size: sharding them over 2 GPUs must show."""
    big = ["model.n_layer=4", "model.n_head=8", "model.n_embd=512", "train.batch_size=2", "train.grad_accum=1"]
    single = read_run(_train(*workspace, "mem_single", _gpu() + big[:-2] + ["train.batch_size=4"]))
    run_dir = _train(*workspace, "mem_fsdp", _gpu() + big + ["parallel=fsdp"])
    ranks = json.loads((run_dir / LAYOUT_FILE).read_text())["ranks"]
    peaks = [r["peak_mem_gb"] for r in ranks]
    assert math.isclose(read_run(run_dir)["summary"]["peak_mem_gb"], max(peaks))
    assert max(peaks) < 0.8 * single["summary"]["peak_mem_gb"], (peaks, single["summary"]["peak_mem_gb"])


@pytest.mark.parametrize("overrides", [
    ["train.precision=fp32"], ["train.precision=bf16"], ["train.precision=fp32", "model.attention=math"],
    ["train.precision=bf16", "train.recompute=true"],
])
def test_the_estimate_is_within_20_percent_of_the_cuda_peak(tmp_path, tiny_overrides, overrides):
    """The 10.6M model at batch 8, dropout on (SDPA's fused kernels keep no attention weights on a GPU)."""
    run_dir = tmp_path / "run"
    result = run_cli([*tiny_overrides, "model=shakespeare", "train.batch_size=8", "train.device=cuda", *overrides,
                      "train.max_iters=2", "train.eval_interval=2", "train.eval_iters=1", "train.ckpt_interval=0",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_run(run_dir)
    est = record["memory_estimate"]
    measured = record["summary"]["peak_mem_gb"] - est["baseline_gb"]
    assert est["total_per_rank"] == pytest.approx(measured, rel=0.2)


def test_mfu_uses_the_published_peak_of_this_gpu(workspace):
    name = torch.cuda.get_device_name(0)
    table_peak = hardware.gpu_table_peak(name, "bf16")
    if table_peak is None:
        pytest.skip(f"{name} is not in hardware.GPU_PEAK_FLOPS: its peak is measured instead")
    run_dir = _train(*workspace, "mfu", _gpu() + ["train.batch_size=4", "train.grad_accum=2"])
    run = read_run(run_dir)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            assert math.isclose(record["mfu"], run["flops_per_token"] * record["tok_per_s"] / table_peak, rel_tol=1e-6)


@needs_gpus(2)
def test_compile_recompute_and_fsdp_together_match_fsdp(workspace):
    base = _gpu() + ["parallel=fsdp", "train.batch_size=2", "train.grad_accum=2"]
    plain = _curves(_train(*workspace, "fsdp_plain", base))
    fused = _curves(_train(*workspace, "fsdp_compiled", base + ["train.compile=true", "train.recompute=true"]))
    _assert_close_curves(fused, plain, BF16_REL)


def test_bf16_and_tf32_follow_the_compute_capability():
    device = torch.device("cuda", 0)
    ampere = torch.cuda.get_device_capability(device) >= hardware.BF16_CAPABILITY
    assert hardware.device_caps("auto", device).bf16 == ampere
    hardware.configure_matmul(device, "fp32", tf32=True)
    assert hardware.matmul_precision(device, "fp32") == ("tf32" if ampere else "fp32")
    hardware.configure_matmul(device, "fp32", tf32=False)
    assert hardware.matmul_precision(device, "fp32") == "fp32"


def test_pinned_batches_arrive_whole_and_contiguous(tiny_overrides):
    from conftest import compose_config

    from nanogpt_runner.launch.app import check
    from nanogpt_runner.train.batches import Batches

    _, _, data = check(compose_config(tiny_overrides), tiny_overrides, announce=lambda _m: None)
    on_gpu = Batches(data, "train", 32, 1, torch.device("cuda", 0)).get(step=3, start=2, count=4)
    on_cpu = Batches(data, "train", 32, 1, torch.device("cpu")).get(step=3, start=2, count=4)
    for gpu_tensor, cpu_tensor in zip(on_gpu, on_cpu, strict=True):
        assert gpu_tensor.is_cuda and gpu_tensor.is_contiguous()
        assert torch.equal(gpu_tensor.cpu(), cpu_tensor)


def test_probe_steps_run_back_to_back_on_a_gpu(tiny_overrides):
    """precision=auto and the plan time groups of queued steps, as the run computes them, not single steps."""
    from conftest import compose_config

    cfg = compose_config(tiny_overrides)
    setting = autotune.Setting.of(cfg, "bf16")
    timing = autotune.time_steps(cfg, 65, torch.device("cuda", 0), setting, seconds=0.1)
    assert timing.steps >= autotune.GPU_TIMING_GROUP and timing.steps % autotune.GPU_TIMING_GROUP == 0
    assert 0 < timing.step_ms < 1000 and timing.peak_bytes > 0


def test_rng_state_is_this_ranks_gpu_only():
    from nanogpt_runner.checkpoint.rng import rng_state, set_rng_state

    torch.cuda.set_device(0)
    torch.cuda.manual_seed(7)
    state = rng_state()
    first = torch.rand(4, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)
    assert state["cuda_device"].numel() > 0


def test_a_cpu_run_on_a_gpu_machine_never_initialises_cuda(tmp_path, tiny_overrides):
    """train.device=cpu: no context, no memory on any GPU (the probe runs in a fresh process)."""
    script = f"""
import sys, torch
sys.argv = ["nanogpt-run", *{_overrides(tiny_overrides, "train.device=cpu", "train.max_iters=4")!r}]
from nanogpt_runner.launch.app import main
try:
    main()
except SystemExit:
    pass
print("cuda initialised:", torch.cuda.is_initialized())
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "cuda initialised: False" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


@needs_gpus(2)
def test_sigusr2_checkpoint_and_resume_on_gpus(tmp_path, tiny_overrides):
    preempt_and_resume(tmp_path, _overrides(tiny_overrides, "parallel=ddp", "train.batch_size=2", *_gpu()))


def _grad_norms(run_dir) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["grad_norm"] for r in lines if r["kind"] == "train" and "grad_norm" in r}


@needs_gpus(2)
@pytest.mark.parametrize("layout", ["parallel=ddp", "parallel=fsdp"])
def test_two_gpus_follow_one_gpus_grad_norms_and_reach_its_fp32_parameters(layout, workspace):
    """IEEE fp32 (TF32 off), so the only differences are the reduction order: every step's gradient norm and
    the final parameters, not only a loss curve within 2%."""
    from test_parallel import _final_params

    fp32 = _gpu("fp32") + ["train.tf32=false"]
    single = _train(*workspace, "single_fp32_ieee", fp32 + ["train.batch_size=4", "train.grad_accum=2"])
    pair = _train(*workspace, f"{layout.split('=')[1]}_fp32_ieee", fp32 + [layout, "train.batch_size=4"])
    reference, got = _grad_norms(single), _grad_norms(pair)
    assert reference and sorted(got) == sorted(reference)
    for step, norm in reference.items():
        assert math.isclose(got[step], norm, rel_tol=1e-4), (step, got[step], norm)
    expected, final = _final_params(single), _final_params(pair)
    assert sorted(final) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name].float(), tensor.float(), rtol=1e-4, atol=1e-5, msg=name)
