"""The batches a run trains and evaluates on, drawn from a prepared corpus.

Batches are a pure function of (seed, split, step): sequence ``i`` of step ``s`` starts at an offset
given by a counter-based hash of (seed, split, s, i). A micro-step or a data-parallel rank takes a
fixed slice of that global batch, so batch 8, batch 4 x accumulation 2 and 2 ranks x batch 4 train on
the same sequences, and a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from nanogpt_runner.data.prepared import PreparedData

SPLIT_IDS = {"train": 1, "val": 2}


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-mixed 64-bit hash, the core of a counter-based generator."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sequence_offsets(
    seed: int, split: str, step: int, indices: np.ndarray, n_tokens: int, block_size: int
) -> np.ndarray:
    """Start offsets of sequences ``indices`` of ``step``: each a pure function of (seed, split, step, i)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(SPLIT_IDS[split]))
        key = _mix64(key + np.uint64(step) * np.uint64(0xD1B54A32D192ED03))
        h = _mix64(key + indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (h % np.uint64(n_tokens - block_size)).astype(np.int64)


class Batches:
    """Deterministic batches of one split. ``get(step, start, count)`` is sequences [start, start+count)
    of that step's global batch: micro-steps and ranks ask for their own slice."""

    def __init__(self, data: PreparedData, split: str, block_size: int, seed: int, device: torch.device):
        self.tokens = np.memmap(data.split_path(split), dtype=data.dtype, mode="r")
        self.split, self.block_size, self.seed, self.device = split, block_size, seed, device
        self._window = np.arange(block_size + 1)

    def get(self, step: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = sequence_offsets(self.seed, self.split, step, np.arange(start, start + count),
                                   len(self.tokens), self.block_size)
        chunk = torch.from_numpy(self.tokens[offsets[:, None] + self._window].astype(np.int64))
        if self.device.type == "cuda":
            # One pinned copy of the contiguous chunk, sliced on the device: pinning the x/y slices (views)
            # would copy each through an unpinned temporary first.
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
