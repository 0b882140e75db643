"""What the machine can do and what a run is using of it: device, precision, peak FLOP/s, memory.

MFU needs the machine's peak. GPUs have published peaks (a small table, with a measured fallback);
CPUs do not, so the peak is measured once per (CPU, threads, dtype) with a large matmul and cached. A bf16
peak that contradicts what the CPU says of itself (its AVX512-BF16/AMX flags, torch's CPU capability) is
measured again before it is cached: a busy machine reads peaks low, and a cached misreading would decide
every later run's precision.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nanogpt_runner.config.schema import Config, DeviceCaps
from nanogpt_runner.fsutil import write_json_atomic
from nanogpt_runner.model.precision import DTYPES
from nanogpt_runner.perf import memory

# Dense (non-sparse) peaks in FLOP/s per GPU, by a pattern of its device name. The first match wins, so the
# variants come before their family: H100 NVL and PCIe before H100 (SXM), A10G apart from A10 and A100.
# "tf32" is an fp32 run's matmul peak when TF32 tensor cores are on (train.tf32, Ampere and newer).
GPU_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H200 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    (r"H200", {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    (r"H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    (r"H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    (r"H100", {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}),  # SXM (80GB HBM3)
    (r"A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    (r"\bA10G\b", {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12}),
    (r"\bA10\b", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    (r"L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    (r"4090", {"bf16": 165e12, "fp16": 165e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    (r"V100", {"fp16": 125e12, "fp32": 15.7e12}),
    (r"\bT4\b", {"fp16": 65e12, "fp32": 8.1e12}),
)
BF16_CAPABILITY = (8, 0)  # Ampere: native bf16 (and TF32) tensor cores; older GPUs emulate bf16
EMULATED_BF16_RATIO = 0.5  # a CPU's bf16 matmul peak under this share of fp32's: bf16 is emulated
# /proc/cpuinfo flags of native bf16 matmuls: x86's AVX512-BF16 and AMX, Arm's BF16 extension
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# torch.backends.cpu.get_cpu_capability() levels below AVX512: no x86 CPU at these has AVX512-BF16 or AMX
BELOW_AVX512 = ("DEFAULT", "NO AVX", "AVX2")
PEAK_FILE = "peak_flops.json"  # in the data cache folder
PEAK_REMEASURES = 2  # further measurements of a peak that contradicts the CPU, before the measurement stands


def gpu_table_peak(name: str, precision: str) -> float | None:
    """The published dense peak of the GPU called ``name`` for ``precision``; None if it is not in the table."""
    for pattern, peaks in GPU_PEAK_FLOPS:
        if re.search(pattern, name):
            return peaks.get(precision)
    return None


def device_kind(requested: str = "auto") -> str:
    """"cuda" or "cpu". Only counts devices: no CUDA context is created."""
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def device_caps(requested: str = "auto", device: torch.device | None = None) -> DeviceCaps:
    """What ``device`` (by default: every visible GPU) can do.

    bf16 is decided from the compute capability (>= 8.0), not ``torch.cuda.is_bf16_supported()``: that
    counts emulation as support and allocates a tensor on the current device, so the Hydra parent and every
    rank that asked before ``set_device`` would open a context (and hold memory) on GPU 0. Reading device
    properties creates no context."""
    cuda = torch.cuda.is_available()
    if device_kind(requested) == "cpu":
        return DeviceCaps(kind="cpu", bf16=True, cuda_available=cuda)
    indices = [device.index] if device is not None and device.index is not None else range(torch.cuda.device_count())
    bf16 = cuda and all(torch.cuda.get_device_capability(i) >= BF16_CAPABILITY for i in indices)
    return DeviceCaps(kind="cuda", bf16=bf16, cuda_available=cuda, gpus=torch.cuda.device_count() if cuda else 0)


def configure_matmul(device: torch.device, precision: str, tf32: bool) -> None:
    """TF32 tensor cores for an fp32 run's matmuls on Ampere and newer (``train.tf32``, on by default): about
    8x the fp32 peak for 10 mantissa bits in the products (accumulation stays fp32). Off: IEEE fp32."""
    if device.type != "cuda":
        return
    use_tf32 = tf32 and precision == "fp32" and torch.cuda.get_device_capability(device) >= BF16_CAPABILITY
    # The legacy setting too: with only the new one set, torch.get_float32_matmul_precision() raises (a mix of
    # the two APIs), and inductor's max-autotune asks it.
    torch.set_float32_matmul_precision("high" if use_tf32 else "highest")
    torch.backends.cuda.matmul.fp32_precision = "tf32" if use_tf32 else "ieee"


def matmul_precision(device: torch.device, precision: str) -> str:
    """The precision the matmuls really run in: an fp32 run on a GPU with TF32 on runs "tf32"."""
    if device.type == "cuda" and precision == "fp32" and torch.backends.cuda.matmul.fp32_precision == "tf32":
        return "tf32"
    return precision


def resolve_precision(precision: str, device: torch.device, caps: DeviceCaps, cache_dir: Path,
                      choose: Callable[[list[str], dict[str, str]], str]) -> str:
    """``auto``: ``choose`` picks among the precisions this device runs natively (nanogpt_runner.perf.autotune
    times this model in each); an explicit precision is kept."""
    if precision != "auto":
        return precision
    return choose(*precision_candidates(device, caps, cache_dir))


def precision_candidates(device: torch.device, caps: DeviceCaps, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The precisions worth timing for ``auto``, and those skipped with the reason: on a GPU bf16 (fp16 where
    bf16 is missing) and fp32; on a CPU fp32, and bf16 unless the CPU emulates it. fp16 never on a CPU."""
    if device.type == "cuda":
        return (["bf16", "fp32"], {}) if caps.bf16 else (["fp16", "fp32"], {"bf16": "this GPU has no bf16"})
    if cpu_emulates_bf16(device, cache_dir):
        bf16, fp32 = peak_flops(device, "bf16", cache_dir), peak_flops(device, "fp32", cache_dir)
        return ["fp32"], {"bf16": f"emulated on this CPU (matmul peak {bf16 / 1e9:.1f} GFLOP/s against "
                                  f"{fp32 / 1e9:.0f} for fp32)"}
    return ["fp32", "bf16"], {}


def cpu_emulates_bf16(device: torch.device, cache_dir: Path) -> bool:
    """True where the CPU's measured bf16 matmul peak is under half of fp32's: no AVX512-BF16 or AMX, so bf16
    is converted in software (often 100x slower). Only this shortcut is taken from the peak: whether bf16 pays
    off for a model is measured on the model."""
    return peak_flops(device, "bf16", cache_dir) < EMULATED_BF16_RATIO * peak_flops(device, "fp32", cache_dir)


def cpu_reports_native_bf16() -> bool | None:
    """What the CPU says of bf16 matmuls: True when its flags name AVX512-BF16, AMX or Arm's BF16; False when
    they name none, or (flags unreadable) torch's dispatch level is below AVX512; None when it cannot tell."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    return False if torch.backends.cpu.get_cpu_capability() in BELOW_AVX512 else None


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features`` in /proc/cpuinfo); None where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def precision_warning(precision: str, device: torch.device, cache_dir: Path) -> str | None:
    """A warning for an explicit bf16 on a CPU that emulates it: valid, but often 100x slower than fp32."""
    if precision != "bf16" or device.type != "cpu" or not cpu_emulates_bf16(device, cache_dir):
        return None
    bf16, fp32 = peak_flops(device, "bf16", cache_dir), peak_flops(device, "fp32", cache_dir)
    return (f"WARNING: this CPU emulates bf16 (matmul peak {bf16 / 1e9:.1f} GFLOP/s against {fp32 / 1e9:.0f} "
            f"for fp32): training will be much slower than with train.precision=fp32 or auto")


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])


def peak_flops(device: torch.device, precision: str, cache_dir: Path) -> float:
    """One device's matmul peak in FLOP/s for ``precision`` (as ``matmul_precision`` names it): from the table
    on a known GPU, else measured once per (device, threads, precision) and cached. On a CPU the peak is that
    of this process's threads (one rank's share of the cores), so world x peak is the group's."""
    if device.type == "cuda" and (flops := gpu_table_peak(torch.cuda.get_device_name(device), precision)):
        return flops
    cache_file = cache_dir / PEAK_FILE
    if (cached := _read_peaks(cache_file).get(_peak_key(device, precision))) is not None:
        return cached
    flops = measure_matmul_flops(device, DTYPES[precision])
    if device.type == "cpu" and precision == "bf16":
        flops = _bf16_peak_the_cpu_agrees_with(device, flops, cache_dir)
    _write_peak(cache_file, _peak_key(device, precision), flops)
    return flops


def _peak_key(device: torch.device, precision: str) -> str:
    return f"{device.type}|{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}|" \
           f"{torch.get_num_threads()}|{precision}|torch{torch.__version__}"


def _read_peaks(cache_file: Path) -> dict:
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_peak(cache_file: Path, key: str, flops: float) -> None:
    """Cache the highest peak seen: a reading taken while other work shared the cores is low, never high."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    peaks = _read_peaks(cache_file)
    previous = peaks.get(key)
    best = max(flops, previous) if isinstance(previous, (int, float)) else flops
    write_json_atomic(cache_file, {**peaks, key: best})


def remeasured_peak(device: torch.device, precision: str, cache_dir: Path) -> float:
    """The peak measured again and cached (the highest reading kept): for a run whose model FLOP/s went over
    the cached peak, which proves that figure was read low (on a busy machine)."""
    flops = measure_matmul_flops(device, DTYPES[precision])
    _write_peak(cache_dir / PEAK_FILE, _peak_key(device, precision), flops)
    return _read_peaks(cache_dir / PEAK_FILE).get(_peak_key(device, precision), flops)


def _bf16_peak_the_cpu_agrees_with(device: torch.device, bf16: float, cache_dir: Path) -> float:
    """The bf16 peak, measured again (up to PEAK_REMEASURES times) while its verdict (emulated or native)
    contradicts the CPU's own report. A peak can only read low, so each figure keeps its highest reading:
    native bf16 that measured slow is bf16 read low; emulated bf16 that measured fast is fp32 read low, and
    the fp32 peak is cached again with its new reading. Where it still disagrees the measurement stands (a VM
    may hide what the flags promise)."""
    native = cpu_reports_native_bf16()
    fp32 = peak_flops(device, "fp32", cache_dir)
    for _ in range(PEAK_REMEASURES):
        if native is None or (bf16 >= EMULATED_BF16_RATIO * fp32) == native:
            break
        if native:
            bf16 = max(bf16, measure_matmul_flops(device, DTYPES["bf16"]))
        else:
            fp32 = max(fp32, measure_matmul_flops(device, DTYPES["fp32"]))
            _write_peak(cache_dir / PEAK_FILE, _peak_key(device, "fp32"), fp32)
    return bf16


# The square matmul a peak is measured with (CPU, GPU): a GPU's 1024^2 product takes microseconds, so its time
# is the kernel launch's, not the tensor cores' (the MFU of a GPU missing from the table read high).
MEASURED_MATMUL_SIZE = (1024, 8192)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Sustained square-matmul FLOP/s; a small probe first keeps an emulated dtype from taking minutes.
    fp32 is never emulated: it is always measured in full (a probe on a busy machine can read 100x low)."""
    probe = math.inf if dtype == torch.float32 else _time_matmuls(device, dtype, size=256, seconds=0.05)
    size = MEASURED_MATMUL_SIZE[device.type == "cuda"]
    return _time_matmuls(device, dtype, size=size, seconds=seconds) if probe > 10e9 else probe


PEAK_WINDOWS = 8  # a measurement's windows: the fastest is kept (a window another process shared reads low)


def _time_matmuls(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    # A private generator: measuring (first run only, then cached) must not move the training RNG, or a
    # run's dropout would depend on whether the peak was already cached.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b
    synchronize(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or not best:
        iterations, start = 0, time.perf_counter()
        while iterations == 0 or time.perf_counter() - start < seconds / PEAK_WINDOWS:
            a @ b
            iterations += 1
            if iterations % 8 == 0:
                synchronize(device)
        synchronize(device)
        best = max(best, 2 * size**3 * iterations / (time.perf_counter() - start))
    return best


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU, which computes as it is asked): before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's marketing name: every figure the runner or a benchmark reports is named with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb(device: torch.device) -> tuple[float, float]:
    """(current, peak since the last ``reset_peak_memory``) in GB: the CUDA allocator on a GPU, the process's
    resident set (VmRSS, VmHWM) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 1e9, torch.cuda.max_memory_allocated(device) / 1e9
    status = _proc_status()
    if "VmRSS" in status and "VmHWM" in status:
        return status["VmRSS"] / 1e9, max(status["VmHWM"], status["VmRSS"]) / 1e9
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc (macOS): a peak that never resets
    peak = peak_kb / 1e9 if sys.platform == "darwin" else peak_kb * 1024 / 1e9
    return peak, peak


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak over once the model is parallelized: the full model every rank built on the CPU
    before sharding, and the set-up, are not what training needs. (On Linux, writing 5 to clear_refs resets
    the process's VmHWM.)"""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _proc_status() -> dict[str, int]:
    """The Vm* lines of /proc/self/status in bytes (empty where there is no /proc)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.startswith("Vm"))
    return {name: int(value.split()[0]) * 1024 for name, value in fields if value.strip().endswith("kB")}


# What a rank's GPU holds beyond the allocator's peak that the estimate models: the CUDA context (300-600 MB),
# NCCL's buffers and the kernels' modules.
CUDA_RUNTIME_MARGIN = 1.0e9


def available_memory(kind: str) -> float:
    """Bytes one rank can use: the least free memory of this node's GPUs (what other processes use is not
    there to take) less CUDA_RUNTIME_MARGIN, or the RAM the kernel can still give without swapping
    (MemAvailable), which a machine's ranks share. No CUDA context is opened in the launcher: the GPUs' use is
    NVML's, as nvidia-smi shows it (their total memory where NVML cannot be asked)."""
    if kind == "cuda":
        return min(_free_gpu_bytes(i) for i in range(max(torch.cuda.device_count(), 1))) - CUDA_RUNTIME_MARGIN
    return memory.available_ram()


def _free_gpu_bytes(index: int) -> float:
    total = float(torch.cuda.get_device_properties(index).total_memory)
    try:
        return total - torch.cuda.device_memory_used(index)
    except Exception:  # no pynvml (nvidia-ml-py), or NVML refused: the total, as before
        return total


def memory_refusal(cfg: Config, vocab_size: int) -> str | None:
    """Why ``cfg`` cannot train here (its memory estimate exceeds the device's memory, naming what would
    fit), or None. On a CPU the ranks share the RAM, and each torchrun worker loads its own torch too (about
    this process's resident set)."""
    kind = device_kind(cfg.train.device)
    ranks_here = cfg.parallel.nproc_per_node
    per_process = memory_gb(torch.device("cpu"))[0] * 1e9 if kind == "cpu" and ranks_here > 1 else 0.0
    return memory.refusal(cfg, vocab_size, kind, available_memory(kind), ranks_here if kind == "cpu" else 1,
                          per_process)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"
