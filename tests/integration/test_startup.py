"""What keeps a run's start-up short: the launcher composes and checks the config before it imports torch, so a
mistake is refused at once and a process group's rank server (nanogpt_runner.launch.torchrun) imports torch beside
the launcher; ranks fork from that server only while they would inherit the launcher's own environment and
working directory."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import subprocess
import sys

import pytest

from nanogpt_runner.launch import torchrun


def test_the_launcher_composes_the_config_before_it_imports_torch():
    probe = "import sys, nanogpt_runner.launch.app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("tool", ["nanogpt_runner.launch.app", "nanogpt_runner.cli.check"])
def test_a_config_mistake_is_refused_before_torch_is_imported(tool, tmp_path):
    """nanogpt-run and nanogpt-check (the viewer's launch form) answer a mistyped value in about a second."""
    probe = ("import atexit, importlib, sys; "
             "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
             f"sys.argv = ['{tool}', 'model.dropout=2', 'run.root={tmp_path}']; "
             f"sys.exit(importlib.import_module('{tool}').main())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "model.dropout=2.0 is outside [0, 1)" in result.stderr
    assert result.stdout.strip().endswith("torch imported: False")


# Counts the calls into torch.cuda that would initialise CUDA (or its driver) while the rank server imports.
CUDA_PROBE = """
import torch, torch.cuda
from nanogpt_runner.launch.torchrun import RANK_SERVER_PRELOAD
called = []
for name in ("is_available", "device_count", "get_device_capability", "get_device_properties", "init",
             "current_device", "is_bf16_supported", "mem_get_info", "set_device"):
    real = getattr(torch.cuda, name)
    setattr(torch.cuda, name, lambda *a, _real=real, _name=name, **k: called.append(_name) or _real(*a, **k))
for module in RANK_SERVER_PRELOAD:
    __import__(module)
print(called)
"""


def test_the_rank_server_imports_never_touch_cuda():
    """A process that initialised CUDA cannot hand it to a forked child: a GPU rank forked from the rank server
    would fail at its first CUDA call. So what the server preloads must not ask torch.cuda anything (on a CPU
    build those calls return at once, and are counted here all the same)."""
    result = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_ranks_fork_from_the_rank_server_only_while_they_would_inherit_the_launchers_state(tmp_path, monkeypatch):
    preloads = []
    monkeypatch.setattr(torchrun, "_rank_server_started_in", None)
    monkeypatch.setattr(multiprocessing, "set_forkserver_preload", preloads.append)
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: None)

    assert torchrun.rank_start_method() == "forkserver"  # started on first use
    torchrun.start_rank_server()
    assert preloads == [["__main__", *torchrun.RANK_SERVER_PRELOAD]]  # once per process

    monkeypatch.setenv("A_JOBS_OWN_SETTING", "1")  # e.g. a sweep job's hydra.job.env_set
    assert torchrun.rank_start_method() == "spawn"
    monkeypatch.delenv("A_JOBS_OWN_SETTING")
    assert torchrun.rank_start_method() == "forkserver"
    monkeypatch.chdir(tmp_path)  # e.g. hydra.job.chdir=true
    assert torchrun.rank_start_method() == "spawn"
