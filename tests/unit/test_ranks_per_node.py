"""A node runs at most one rank per visible GPU, or CPU_RANKS_PER_CORE per available core on the CPU: more is
refused in one line (before torch is imported for a train.device=cpu run), also when a resumed checkpoint's
layout asks for it."""

from __future__ import annotations

import pytest
from conftest import compose_config
from test_saved_config_trust import crafted_run, plan

from nanogpt_runner.config import validate as validation
from nanogpt_runner.config.schema import CPU_RANKS_PER_CORE, DeviceCaps

CPU = DeviceCaps(kind="cpu", bf16=True, cuda_available=False)


def gpus(count: int) -> DeviceCaps:
    return DeviceCaps(kind="cuda", bf16=True, cuda_available=True, gpus=count)


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(validation, "available_cores", lambda: 2)


def refusals(overrides: list[str], device: DeviceCaps | None = None) -> list[str]:
    return [p for p in validation.validate(compose_config(["model=tiny", *overrides]), device)
            if "nproc_per_node=" in p and ("core" in p or "GPU" in p)]


def test_a_cpu_run_with_more_ranks_than_the_cores_allow_is_one_line_before_torch():
    [line] = refusals(["parallel=ddp", "parallel.nproc_per_node=64", "train.device=cpu"])
    assert line == (f"parallel.nproc_per_node=64 on 2 CPU core(s): a CPU run has at most {CPU_RANKS_PER_CORE} ranks "
                    f"per core; use parallel.nproc_per_node={2 * CPU_RANKS_PER_CORE} or fewer.")


def test_the_tested_layouts_still_fit_two_cores():
    assert refusals(["parallel=fsdp_tp", "train.device=cpu"], CPU) == []  # 4 ranks on 2 cores: a warning only


def test_an_auto_device_is_checked_once_its_caps_are_known():
    overrides = ["parallel=ddp", "parallel.nproc_per_node=64"]
    assert refusals(overrides) == []  # auto: a GPU may yet take them
    assert len(refusals(overrides, CPU)) == 1
    [line] = refusals(["parallel=ddp", "parallel.nproc_per_node=4"], gpus(2))
    assert "has 2 visible GPU(s), one rank each: use parallel.nproc_per_node=2 or fewer" in line
    assert refusals(["parallel=ddp", "parallel.nproc_per_node=2"], gpus(2)) == []


def test_a_resumed_checkpoints_layout_is_held_to_the_same_cap(tmp_path):
    def many_ranks(config: dict) -> None:
        config["parallel"].update(nproc_per_node=64, dp="ddp")

    resumed = plan(tmp_path, crafted_run(tmp_path, many_ranks)).cfg
    assert resumed.parallel.nproc_per_node == 64  # a layout fact the resume takes from the checkpoint
    [line] = [p for p in validation.validate(resumed, CPU) if "nproc_per_node=64" in p]
    assert f"at most {CPU_RANKS_PER_CORE} ranks per core" in line
