"""Prepared corpora and the batches drawn from them.

A prepared corpus (nanogpt_runner.prepare makes one) is a folder with ``train.bin`` and ``val.bin`` (token ids,
uint16 when the vocabulary fits, else uint32, read through memmaps), ``tokenizer.json`` and ``meta.json``
(where the text came from, the id dtype, tokens and UTF-8 bytes per split). A nanoGPT folder used as it is
(``data=bin``) has its meta.json and tokenizer.json here and its .bin files where they are.

Batches are a pure function of (seed, split, step): sequence ``i`` of step ``s`` starts at an offset
given by a counter-based hash of (seed, split, s, i). A micro-step or a data-parallel rank takes a
fixed slice of that global batch, so batch 8, batch 4 x accumulation 2 and 2 ranks x batch 4 train on
the same sequences, and a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from nanogpt_runner import tokenizer as tokenizers
from nanogpt_runner.config import DataConfig

SPLITS = ("train", "val")
SPLIT_IDS = {"train": 1, "val": 2}
META_FILE = "meta.json"
FORMAT = 2  # meta.json's layout; a folder of another format is prepared again under a new name


class DataError(Exception):
    """A data problem the user can fix; the message names it and the fix."""


@dataclass(frozen=True)
class PreparedData:
    name: str
    directory: Path
    source: str
    tokenizer: tokenizers.Tokenizer = field(repr=False)
    tokens: dict[str, int]
    text_bytes: dict[str, int]  # UTF-8 bytes of text per split (end-of-text tokens count none)
    dtype: np.dtype
    bin_dir: Path  # where train.bin and val.bin are: ``directory``, or a nanoGPT folder used in place

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for: a loss per token over these is bits per byte."""
        return self.tokenizer.token_bytes()

    def split_path(self, split: str) -> Path:
        return self.bin_dir / f"{split}.bin"

    def split_sizes(self) -> dict[str, int]:
        return dict(self.tokens)

    def as_record(self) -> dict:
        return {"name": self.name, "dir": str(self.directory), "source": self.source,
                "tokenizer": self.tokenizer.kind, "vocab_size": self.vocab_size, "tokens": self.tokens,
                "bytes": self.text_bytes,
                "bytes_per_token": {s: self.text_bytes[s] / max(self.tokens[s], 1) for s in SPLITS}}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanogpt-runner"


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def load_prepared(directory: Path) -> PreparedData:
    """The prepared corpus in ``directory``; a DataError naming the fix when it is unreadable."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
        tokenizer = tokenizers.load(directory)
        return PreparedData(meta["name"], directory, meta["source"], tokenizer,
                            {s: int(meta["tokens"][s]) for s in SPLITS}, {s: int(meta["bytes"][s]) for s in SPLITS},
                            np.dtype(meta["dtype"]), Path(meta.get("bin_dir") or directory))
    except tokenizers.TokenizerUnavailable as err:
        raise DataError(str(err)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, tokenizers.TokenizerError) as err:
        raise DataError(
            f"prepared data in {directory} is unreadable ({err}); delete that folder to rebuild it"
        ) from err


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
