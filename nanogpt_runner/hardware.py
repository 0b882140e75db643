"""What the machine can do and what a run is using of it: device, precision, peak FLOP/s, memory.

MFU needs the machine's peak. GPUs have published peaks (a small table, with a measured fallback);
CPUs do not, so the peak is measured once per (CPU, threads, dtype) with a large matmul and cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from nanogpt_runner.config import DeviceCaps

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (non-sparse) tensor-core peaks in FLOP/s, by a substring of the device name.
GPU_PEAK_FLOPS = {
    "bf16": {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12},
    "fp16": {"H200": 989e12, "H100": 989e12, "A100": 312e12, "V100": 125e12, "T4": 65e12, "4090": 165e12},
    "fp32": {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "V100": 15.7e12, "T4": 8.1e12},
}


def device_caps(requested: str = "auto") -> DeviceCaps:
    cuda = torch.cuda.is_available()
    if requested == "cuda" or (requested == "auto" and cuda):
        bf16 = cuda and torch.cuda.is_bf16_supported()
        return DeviceCaps(kind="cuda", bf16=bf16, fp16_fast=cuda, cuda_available=cuda)
    return DeviceCaps(kind="cpu", bf16=True, fp16_fast=False, cuda_available=cuda)


def resolve_precision(precision: str, device: torch.device, caps: DeviceCaps, cache_dir: Path) -> str:
    """``auto``: on GPU bf16 (fp16 where bf16 is missing); on CPU bf16 only where its measured matmul
    peak clearly beats fp32 (CPUs without bf16 instructions emulate it, often 100x slower).
    fp16 is never chosen on a CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if caps.bf16 else "fp16"
    return "bf16" if cpu_bf16_pays_off(device, cache_dir) else "fp32"


def cpu_bf16_pays_off(device: torch.device, cache_dir: Path) -> bool:
    """True where the CPU's measured bf16 matmul peak beats fp32 by 30% (native AVX512-BF16 or AMX)."""
    return peak_flops(device, "bf16", cache_dir) > 1.3 * peak_flops(device, "fp32", cache_dir)


def precision_warning(precision: str, device: torch.device, cache_dir: Path) -> str | None:
    """A warning for an explicit bf16 on a CPU that emulates it: valid, but often 100x slower than fp32."""
    if precision != "bf16" or device.type != "cpu" or cpu_bf16_pays_off(device, cache_dir):
        return None
    bf16, fp32 = peak_flops(device, "bf16", cache_dir), peak_flops(device, "fp32", cache_dir)
    return (f"WARNING: this CPU emulates bf16 (matmul peak {bf16 / 1e9:.1f} GFLOP/s against {fp32 / 1e9:.0f} "
            f"for fp32): training will be much slower than with train.precision=fp32 or auto")


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])


def peak_flops(device: torch.device, precision: str, cache_dir: Path) -> float:
    """The device's matmul peak in FLOP/s for ``precision``: from the table on GPUs, else measured and cached."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.get(precision, {}).items():
            if key in name:
                return flops
    key = f"{device.type}|{_cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}|" \
          f"{torch.get_num_threads()}|{precision}|torch{torch.__version__}"
    cache_file = cache_dir / "peak_flops.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_matmul_flops(device, DTYPES[precision])
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_file)
    return cache[key]


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Sustained square-matmul FLOP/s; a small probe first keeps an emulated dtype from taking minutes."""
    probe = _time_matmuls(device, dtype, size=256, seconds=0.05)
    return _time_matmuls(device, dtype, size=1024, seconds=seconds) if probe > 10e9 else probe


def _time_matmuls(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    # A private generator: measuring (first run only, then cached) must not move the training RNG, or a
    # run's dropout would depend on whether the peak was already cached.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b
    _synchronize(device)
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
        if iterations % 8 == 0:
            _synchronize(device)
    _synchronize(device)
    return 2 * size**3 * iterations / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb(device: torch.device) -> tuple[float, float]:
    """(current, peak) memory in GB: CUDA allocator on GPU, process resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 1e9, torch.cuda.max_memory_allocated(device) / 1e9
    current = 0.0
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):
        pass
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak_kb / 1e9 if sys.platform == "darwin" else peak_kb * 1024 / 1e9
    return current, max(peak, current)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"
