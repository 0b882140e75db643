"""Corpora and batches.

A corpus is prepared once into a cache folder: ``train.bin`` and ``val.bin`` (uint16 token ids,
read through memmaps) and ``meta.json`` (the character vocabulary and where the text came from).

Batches are a pure function of (seed, split, step): sequence ``i`` of step ``s`` starts at an offset
given by a counter-based hash of (seed, split, s, i). A micro-step or a data-parallel rank takes a
fixed slice of that global batch, so batch 8, batch 4 x accumulation 2 and 2 ranks x batch 4 train on
the same sequences, and a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt_runner.config import DataConfig

PYSTDLIB_MAX_BYTES = 4_000_000
SPLIT_IDS = {"train": 1, "val": 2}


class DataError(Exception):
    """A data problem the user can fix; the message names it and the fix."""


@dataclass(frozen=True)
class PreparedData:
    name: str
    directory: Path
    source: str
    vocab: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split_sizes(self) -> dict[str, int]:
        return {split: (self.directory / f"{split}.bin").stat().st_size // 2 for split in SPLIT_IDS}

    def encode(self, text: str) -> list[int]:
        index = {ch: i for i, ch in enumerate(self.vocab)}
        unknown = sorted({ch for ch in text if ch not in index})
        if unknown:
            raise DataError(
                f"characters not in this run's vocabulary: {' '.join(repr(c) for c in unknown)}; "
                f"remove them from the prompt"
            )
        return [index[ch] for ch in text]

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)

    def as_record(self) -> dict:
        return {"name": self.name, "dir": str(self.directory), "source": self.source,
                "vocab_size": self.vocab_size, "tokens": self.split_sizes()}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanogpt-runner"


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def load_prepared(directory: Path) -> PreparedData:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        return PreparedData(meta["name"], directory, meta["source"], tuple(meta["vocab"]))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(
            f"prepared data in {directory} is unreadable ({err}); delete that folder to rebuild it"
        ) from err


def prepare(cfg: DataConfig, announce=print) -> PreparedData:
    """Find or build the prepared corpus that ``cfg`` names; ``announce`` receives user-visible warnings.

    shakespeare_char resolves, in order: already prepared, ``data.path``, a download from ``data.url``,
    and finally the offline fallback (pystdlib_char), announced and recorded as the data actually used.
    """
    root = cache_dir(cfg)
    if cfg.name == "text_file":
        if cfg.path is None:
            raise DataError("data=text_file needs data.path=FILE_OR_FOLDER")
        path = Path(cfg.path).expanduser().resolve()
        key = hashlib.sha1(f"{path}|{_fingerprint(path)}|{cfg.val_fraction}".encode()).hexdigest()[:12]
        return _prepared_or_build(root / f"text_file-{key}", "text_file", lambda: (_read_text(path), str(path)), cfg)
    if cfg.name == "pystdlib_char":
        return _prepared_or_build(root / f"pystdlib_char-py{sys.version_info[0]}.{sys.version_info[1]}",
                                  "pystdlib_char", _pystdlib_text, cfg)
    directory = root / "shakespeare_char"
    if (directory / "meta.json").exists():
        return load_prepared(directory)
    if cfg.path is not None:
        path = Path(cfg.path).expanduser().resolve()
        return _prepared_or_build(directory, "shakespeare_char", lambda: (_read_text(path), str(path)), cfg)
    try:
        text = _download(cfg.url, cfg.download_timeout_s)
    except OSError as err:
        announce(
            f"WARNING: tiny-shakespeare is not prepared, data.path is unset and the download from {cfg.url} "
            f"failed ({err}). Training on the offline fallback corpus pystdlib_char (this Python's standard "
            f"library source) instead; pass data.path=/path/to/input.txt to use tiny-shakespeare."
        )
        return prepare(DataConfig(name="pystdlib_char", cache_dir=cfg.cache_dir, val_fraction=cfg.val_fraction))
    return _prepared_or_build(directory, "shakespeare_char", lambda: (text, cfg.url), cfg)


def _prepared_or_build(directory: Path, name: str, read_text, cfg: DataConfig) -> PreparedData:
    if (directory / "meta.json").exists():
        return load_prepared(directory)
    text, source = read_text()
    return write_prepared(directory, name, text, source, cfg.val_fraction)


def write_prepared(directory: Path, name: str, text: str, source: str, val_fraction: float) -> PreparedData:
    """Tokenize ``text`` by character and write the split memmaps; the folder appears atomically."""
    vocab = tuple(sorted(set(text)))
    if len(vocab) > 65535:
        raise DataError(f"{source} has {len(vocab)} distinct characters; uint16 tokens allow 65535")
    if len(text) < 4:
        raise DataError(f"{source} holds only {len(text)} characters: give it more text")
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.fromiter((index[ch] for ch in text), dtype=np.uint16, count=len(text))
    cut = int(len(ids) * (1 - val_fraction))
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(tmp / "train.bin")
    ids[cut:].tofile(tmp / "val.bin")
    (tmp / "meta.json").write_text(json.dumps({"name": name, "source": source, "vocab": list(vocab)}))
    try:
        tmp.rename(directory)
    except OSError:  # another process prepared it first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return load_prepared(directory)


def _fingerprint(path: Path) -> str:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data.path={path} does not exist: point it at a UTF-8 text file or a folder of .txt files")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"data.path={path} is a folder with no .txt files in it")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{f} is not UTF-8 text ({err.reason} at byte {err.start}): convert it to UTF-8") from err
    return "\n".join(parts)


def _download(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode("utf-8")


def _pystdlib_text() -> tuple[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for f in sorted(stdlib.glob("*.py")):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= PYSTDLIB_MAX_BYTES:
            break
    return "".join(parts), f"python {sys.version.split()[0]} standard library ({stdlib})"


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
        self.tokens = np.memmap(data.directory / f"{split}.bin", dtype=np.uint16, mode="r")
        self.split, self.block_size, self.seed, self.device = split, block_size, seed, device
        self._window = np.arange(block_size + 1)

    def get(self, step: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = sequence_offsets(self.seed, self.split, step, np.arange(start, start + count),
                                   len(self.tokens), self.block_size)
        chunk = torch.from_numpy(self.tokens[offsets[:, None] + self._window].astype(np.int64))
        x, y = chunk[:, :-1], chunk[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(), y.contiguous()
