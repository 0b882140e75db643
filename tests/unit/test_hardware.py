"""Hardware facts the runner relies on: which precision ``auto`` picks, the cached matmul peak behind
MFU, and memory readings."""

from __future__ import annotations

import torch

from nanogpt_runner.config.schema import DeviceCaps
from nanogpt_runner.perf import hardware

CPU = torch.device("cpu")
CPU_CAPS = DeviceCaps(kind="cpu", bf16=True, cuda_available=False)


def fake_peaks(monkeypatch, fp32: float, bf16: float) -> list[str]:
    measured = []

    def measure(device, dtype):
        measured.append(str(dtype))
        return {torch.float32: fp32, torch.bfloat16: bf16}[dtype]

    monkeypatch.setattr(hardware, "measure_matmul_flops", measure)
    return measured


def test_auto_times_bf16_on_a_cpu_unless_the_cpu_emulates_it(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)  # the measurement alone decides here
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    fake_peaks(monkeypatch, fp32=100e9, bf16=80e9)  # native but not faster at matmul: the model decides
    assert hardware.precision_candidates(CPU, CPU_CAPS, tmp_path / "native") == (["fp32", "bf16"], {})
    fake_peaks(monkeypatch, fp32=100e9, bf16=1e9)  # emulated bf16, as on CPUs without AVX512-BF16/AMX
    candidates, skipped = hardware.precision_candidates(CPU, CPU_CAPS, tmp_path / "slow")
    assert candidates == ["fp32"] and "emulated" in skipped["bf16"]


def test_an_explicit_precision_is_kept_and_auto_asks_the_chooser(tmp_path):
    def choose(candidates, skipped):
        raise AssertionError("an explicit precision needs no probe")

    assert hardware.resolve_precision("bf16", CPU, CPU_CAPS, tmp_path, choose) == "bf16"
    assert hardware.resolve_precision("fp32", CPU, CPU_CAPS, tmp_path, choose) == "fp32"
    cuda = torch.device("cuda")
    caps = DeviceCaps(kind="cuda", bf16=True, cuda_available=True)
    assert hardware.resolve_precision("auto", cuda, caps, tmp_path, lambda c, s: c[-1]) == "fp32"


def test_auto_on_gpus_times_bf16_or_fp16_against_fp32(tmp_path):
    cuda = torch.device("cuda")
    with_bf16 = DeviceCaps(kind="cuda", bf16=True, cuda_available=True)
    without_bf16 = DeviceCaps(kind="cuda", bf16=False, cuda_available=True)
    assert hardware.precision_candidates(cuda, with_bf16, tmp_path) == (["bf16", "fp32"], {})
    assert hardware.precision_candidates(cuda, without_bf16, tmp_path)[0] == ["fp16", "fp32"]


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


def test_the_gpu_peak_table_tells_variants_apart():
    bf16 = {name: hardware.gpu_table_peak(name, "bf16") for name in (
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A10G", "NVIDIA A10",
        "NVIDIA A100-SXM4-80GB")}
    assert bf16 == {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
                    "NVIDIA A10G": 70e12, "NVIDIA A10": 125e12, "NVIDIA A100-SXM4-80GB": 312e12}
    assert hardware.gpu_table_peak("NVIDIA H100 80GB HBM3", "tf32") == 495e12  # fp32 runs with TF32 on
    assert hardware.gpu_table_peak("Some Future GPU", "bf16") is None  # measured instead, as on a CPU


def test_the_peak_memory_starts_over_after_a_reset():
    """Reset after parallelizing: the full model built before sharding is not what training needs."""
    ballast = torch.ones(64, 1024, 1024)  # 256 MB resident
    ballast.add_(1)
    _, before = hardware.memory_gb(CPU)
    del ballast
    hardware.reset_peak_memory(CPU)
    current, after = hardware.memory_gb(CPU)
    assert after < before - 0.2 and current <= after


def test_a_cpu_run_never_touches_cuda_settings():
    before = torch.backends.cuda.matmul.fp32_precision
    hardware.configure_matmul(CPU, "fp32", tf32=True)
    assert torch.backends.cuda.matmul.fp32_precision == before
    assert hardware.matmul_precision(CPU, "fp32") == "fp32"
    assert hardware.device_kind("cpu") == "cpu" and hardware.device_caps("cpu").kind == "cpu"


def readings(monkeypatch, fp32: list[float], bf16: list[float]) -> list[str]:
    """Successive peak readings per dtype (a busy machine reads low, then recovers)."""
    left, measured = {torch.float32: list(fp32), torch.bfloat16: list(bf16)}, []

    def measure(device, dtype):
        measured.append(str(dtype).removeprefix("torch."))
        return left[dtype].pop(0)

    monkeypatch.setattr(hardware, "measure_matmul_flops", measure)
    return measured


def test_a_bf16_peak_read_low_on_a_cpu_with_native_bf16_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    measured = readings(monkeypatch, fp32=[100e9], bf16=[2e9, 150e9])
    assert not hardware.cpu_emulates_bf16(CPU, tmp_path)  # the second reading agrees with the CPU
    assert measured == ["bfloat16", "float32", "bfloat16"] and hardware.peak_flops(CPU, "bf16", tmp_path) == 150e9


def test_a_fast_bf16_on_a_cpu_without_it_measures_fp32_again(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    readings(monkeypatch, fp32=[10e9, 100e9], bf16=[20e9])  # fp32 first read 10x low
    assert hardware.cpu_emulates_bf16(CPU, tmp_path)
    assert hardware.peak_flops(CPU, "fp32", tmp_path) == 100e9  # cached with its new reading


def test_a_peak_that_keeps_disagreeing_stands_after_the_remeasures(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # a VM may hide it
    measured = readings(monkeypatch, fp32=[100e9], bf16=[1e9] * (1 + hardware.PEAK_REMEASURES))
    assert hardware.cpu_emulates_bf16(CPU, tmp_path) and measured.count("bfloat16") == 1 + hardware.PEAK_REMEASURES


def test_what_the_cpu_reports_comes_from_its_flags_or_torchs_dispatch_level(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse", "avx2"}))
    assert hardware.cpu_reports_native_bf16() is False
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.cpu_reports_native_bf16() is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert hardware.cpu_reports_native_bf16() is None  # AVX512 alone says nothing of bf16: the measurement decides


def test_a_cached_peak_only_ever_rises(monkeypatch, tmp_path):
    """A peak read while other work shared the cores is low, never high: a lower reading never replaces one."""
    fake_peaks(monkeypatch, fp32=100e9, bf16=300e9)
    assert hardware.peak_flops(CPU, "fp32", tmp_path) == 100e9
    fake_peaks(monkeypatch, fp32=40e9, bf16=300e9)  # the machine is busy now
    assert hardware.remeasured_peak(CPU, "fp32", tmp_path) == 100e9
    fake_peaks(monkeypatch, fp32=180e9, bf16=300e9)  # and idle again
    assert hardware.remeasured_peak(CPU, "fp32", tmp_path) == 180e9
    assert hardware.peak_flops(CPU, "fp32", tmp_path) == 180e9
