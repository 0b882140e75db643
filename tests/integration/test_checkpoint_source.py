"""In a process group rank 0 picks the checkpoint to continue from and broadcasts it: the other ranks neither hash
the folder again nor fall back on their own (to a checkpoint rank 0 did not pick), and rank 0's refusal is theirs.
Two gloo processes."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from nanogpt_runner.checkpoint.checkpointer import Checkpointer
from nanogpt_runner.errors import CheckpointError


def _rank(rank: int, store_file: str, out: str, refuse: bool) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{store_file}")
    try:
        def find_source():
            if rank != 0:
                raise AssertionError("only rank 0 looks for the checkpoint")
            if refuse:
                raise CheckpointError("checkpoint step_4 is damaged: model.pt does not match its sha256")
            return Path("checkpoints/step_4"), {"step": 4}

        me = types.SimpleNamespace(_find_source=find_source)
        try:
            path, meta = Checkpointer.source(me)
            result = {"path": str(path), "step": meta["step"]}
        except CheckpointError as err:
            result = {"refused": str(err)}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, refuse: bool) -> list[dict]:
    mp.start_processes(_rank, args=(str(tmp_path / "store"), str(tmp_path), refuse), nprocs=2, start_method="spawn")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_rank_continues_from_the_checkpoint_rank_0_picked(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _run(tmp_path, refuse=False) == [{"path": os.path.join("checkpoints", "step_4"), "step": 4}] * 2


def test_rank_0s_refusal_is_every_ranks(tmp_path):
    reports = _run(tmp_path, refuse=True)
    assert reports[0] == reports[1] and "sha256" in reports[0]["refused"]
