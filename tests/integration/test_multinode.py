"""Multi-node torchrun on one machine: two ``nanogpt-run`` node agents (nnodes=2, one process each) meet
at a c10d rendezvous on loopback and train as one DDP group, writing one run directory (as on a cluster
with a shared filesystem), and the result matches the single-process run on the same global batch."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

from nanogpt_runner.runs.rundir import read_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_two_node_agents_form_one_group(tmp_path, tiny_overrides):
    cli = str(Path(sys.executable).parent / "nanogpt-run")
    common = [*tiny_overrides, "train.max_iters=6", "train.eval_interval=6", "train.log_interval=1"]
    run_dir = tmp_path / "two_nodes"
    node = [*common, "parallel=ddp", "parallel.nproc_per_node=1", "parallel.nnodes=2",
            f"parallel.rdzv_endpoint=127.0.0.1:{_free_port()}", f"parallel.rdzv_id=test-{os.getpid()}",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    agents = [subprocess.Popen([cli, *node], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    run = read_run(run_dir)
    assert run["status"] == "completed" and run["world_size"] == 2 and run["mesh"]["dp"] == 2
    assert (run_dir / "rank1.log").exists()

    single_dir = tmp_path / "single"
    single = subprocess.run([cli, *common, "train.grad_accum=2", f"hydra.run.dir={single_dir}"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    reference = _losses(single_dir)
    assert sorted(_losses(run_dir)) == sorted(reference)
    for step, loss in _losses(run_dir).items():
        assert math.isclose(loss, reference[step], rel_tol=1e-4)
