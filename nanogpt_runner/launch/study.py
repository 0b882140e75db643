"""A study arm this machine cannot run is recorded, not run and not failed (docs/studies.md).

``+study=techniques`` sweeps every arm of conf/technique/; some need what a machine lacks (fp16 on a CPU, four
processes on two cores). Such a job is not trained: its run.json gets status ``unsupported`` and the reason,
so the technique card lists the arm with it and the sweep does not count it as a failure.
"""

from __future__ import annotations

import time
from pathlib import Path

from nanogpt_runner.analysis.study import UNSUPPORTED
from nanogpt_runner.config.schema import Config, available_cores, world_size
from nanogpt_runner.config.validate import validate
from nanogpt_runner.runs.rundir import RunWriter


def unsupported_reason(cfg: Config) -> str | None:
    """Why this machine cannot run this study arm (None: it can, or the run is no study).

    The device's own refusals (validation with the device known, beyond the config's own problems), bf16 on
    a CPU whose flags name no native bf16 (it would be emulated: the study measures what the device runs
    natively), and more processes than the machine has GPUs (on a GPU) or cores (on the CPU): a layout
    squeezed onto fewer would measure the contention, not the layout."""
    if not cfg.study.kind:
        return None
    from nanogpt_runner.perf.hardware import cpu_reports_native_bf16, device_caps

    caps = device_caps(cfg.train.device)
    own = set(validate(cfg))
    device_problems = [p for p in validate(cfg, caps) if p not in own]
    if device_problems:
        return device_problems[0]
    if caps.kind == "cpu" and cfg.train.precision == "bf16" and cpu_reports_native_bf16() is False:
        return ("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16, AMX or Arm BF16 in its flags): "
                "it would be emulated in software, not a technique this machine runs")
    processes = world_size(cfg.parallel)
    if caps.kind == "cuda":
        import torch

        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = available_cores(), "CPU cores"
    if processes > have:
        return (f"parallel={cfg.parallel.name} needs {processes} processes, and this machine has {have} {what}: "
                f"run the study where there are {processes}")
    return None


def record_unsupported(run_dir: Path, identity: dict, reason: str) -> None:
    """The job's run.json: what it would have been, status ``unsupported`` and why."""
    writer = RunWriter(run_dir, identity)
    writer.update(status=UNSUPPORTED, error=reason, end_time=time.time())
    writer.close()
