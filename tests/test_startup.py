"""What keeps a run's start-up short: the launcher composes the config before it imports torch, so a process
group's rank server (nanogpt_runner.torchrun) imports torch beside it, and ranks fork from that server only
while they would inherit the launcher's own environment and working directory."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import subprocess
import sys

from nanogpt_runner import torchrun


def test_the_launcher_composes_the_config_before_it_imports_torch():
    probe = "import sys, nanogpt_runner.launch; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


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
