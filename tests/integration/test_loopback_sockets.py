"""A single-node run's process group listens on loopback only: the launcher's rendezvous store and every rank's
sockets (gloo's pairs), read from /proc/net/tcp while a 2-rank gloo run trains."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from listening_sockets import is_loopback, listening, process_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


def test_no_socket_of_a_single_node_group_listens_beyond_loopback(tmp_path, tiny_overrides):
    cli = str(Path(sys.executable).parent / "nanogpt-run")
    # Long enough that it is stopped, not finished, once every process's sockets were seen.
    command = [cli, *tiny_overrides, "parallel=ddp", "parallel.nproc_per_node=2", "train.max_iters=100000",
               "train.eval_interval=100000", f"hydra.run.dir={tmp_path / 'run'}"]
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, set[tuple[str, int]]] = {}
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    try:
        while launcher.poll() is None and time.monotonic() < deadline:
            for pid, sockets in listening(process_tree(launcher.pid)).items():
                seen.setdefault(pid, set()).update(sockets)
            if launcher.pid in seen and len(seen) >= 3:  # the launcher's store and both ranks' gloo sockets
                break
            time.sleep(0.05)
    finally:
        launcher.send_signal(signal.SIGINT)  # the ranks checkpoint and stop
        output = launcher.communicate(timeout=300)[0]
    assert launcher.pid in seen and len(seen) >= 3, f"not every process was seen listening: {seen}\n{output[-3000:]}"
    wide = {pid: sockets for pid, sockets in seen.items() if not all(is_loopback(a) for a, _ in sockets)}
    assert not wide, f"listening beyond loopback: {wide}"
