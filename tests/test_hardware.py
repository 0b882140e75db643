"""Hardware facts the runner relies on: which precision ``auto`` picks, the cached matmul peak behind
MFU, and memory readings."""

from __future__ import annotations

import torch

from nanogpt_runner import hardware
from nanogpt_runner.config import DeviceCaps

CPU = torch.device("cpu")
CPU_CAPS = DeviceCaps(kind="cpu", bf16=True, cuda_available=False)


def fake_peaks(monkeypatch, fp32: float, bf16: float) -> list[str]:
    measured = []

    def measure(device, dtype):
        measured.append(str(dtype))
        return {torch.float32: fp32, torch.bfloat16: bf16}[dtype]

    monkeypatch.setattr(hardware, "measure_matmul_flops", measure)
    return measured


def test_auto_picks_bf16_on_a_cpu_only_where_it_is_clearly_faster(monkeypatch, tmp_path):
    fake_peaks(monkeypatch, fp32=100e9, bf16=400e9)
    assert hardware.resolve_precision("auto", CPU, CPU_CAPS, tmp_path / "fast") == "bf16"
    fake_peaks(monkeypatch, fp32=100e9, bf16=1e9)  # emulated bf16, as on CPUs without AVX512-BF16/AMX
    assert hardware.resolve_precision("auto", CPU, CPU_CAPS, tmp_path / "slow") == "fp32"


def test_an_explicit_precision_is_kept(tmp_path):
    assert hardware.resolve_precision("bf16", CPU, CPU_CAPS, tmp_path) == "bf16"
    assert hardware.resolve_precision("fp32", CPU, CPU_CAPS, tmp_path) == "fp32"


def test_auto_on_gpus_prefers_bf16_then_fp16(tmp_path):
    cuda = torch.device("cuda")
    assert hardware.resolve_precision("auto", cuda, DeviceCaps("cuda", True, True, True), tmp_path) == "bf16"
    assert hardware.resolve_precision("auto", cuda, DeviceCaps("cuda", False, True, True), tmp_path) == "fp16"


def test_the_cpu_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
    measured = fake_peaks(monkeypatch, fp32=123e9, bf16=1e9)
    assert hardware.peak_flops(CPU, "fp32", tmp_path) == 123e9
    assert hardware.peak_flops(CPU, "fp32", tmp_path) == 123e9
    assert measured == ["torch.float32"]
    assert (tmp_path / "peak_flops.json").exists()


def test_a_real_matmul_peak_is_plausible():
    flops = hardware.measure_matmul_flops(CPU, torch.float32, seconds=0.05)
    assert 1e8 < flops < 1e14


def test_memory_readings_are_positive_and_peak_is_at_least_current():
    current, peak = hardware.memory_gb(CPU)
    assert 0 < current <= peak


def test_fp32_needs_no_autocast():
    with hardware.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with hardware.autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_explicit_bf16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, tmp_path):
    fake_peaks(monkeypatch, fp32=100e9, bf16=1e9)
    warning = hardware.precision_warning("bf16", CPU, tmp_path / "slow")
    assert "emulates bf16" in warning and "1.0 GFLOP/s" in warning
    assert hardware.precision_warning("fp32", CPU, tmp_path / "slow") is None
    fake_peaks(monkeypatch, fp32=100e9, bf16=400e9)
    assert hardware.precision_warning("bf16", CPU, tmp_path / "fast") is None
