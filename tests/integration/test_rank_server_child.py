"""torchrun.in_rank_server: work whose CUDA context must not stay in the launcher (train.plan=auto's timings on a
GPU) runs in a process forked from the rank server; its result and its exception come back."""

from __future__ import annotations

import os

import pytest

from nanogpt_runner.launch.torchrun import in_rank_server


def test_work_runs_in_another_process_and_its_result_and_error_come_back():
    assert in_rank_server(os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"):
        in_rank_server(int, "not a number")
