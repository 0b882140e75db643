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
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured; CUDA states only when the same number of devices is present."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
