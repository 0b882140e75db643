"""The random state a training step draws from, per rank: saved with every checkpoint and restored on
resume, so a resumed run continues bit for bit (dropout masks included).

Held in types ``torch.load(weights_only=True)`` accepts (tensors, ints, floats, lists), so reading it back
cannot run code.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Every RNG a training step may draw from, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # This rank's GPU only (the current device): never another rank's, and nothing on a CPU run, which
        # must not initialise CUDA on a GPU machine.
        "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else torch.empty(0, dtype=torch.uint8),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured; the CUDA state onto this rank's GPU when both have one."""
    torch.set_rng_state(state["torch"])
    cuda_state = state.get("cuda_device")
    if cuda_state is not None and cuda_state.numel() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(cuda_state)
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
