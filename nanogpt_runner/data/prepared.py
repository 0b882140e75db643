"""Prepared corpora: what a folder of them holds, and reading one (numpy only: the launcher reads this
before it has imported torch).

A prepared corpus (nanogpt_runner.data.prepare makes one) is a folder with ``train.bin`` and ``val.bin`` (token ids,
uint16 when the vocabulary fits, else uint32, read through memmaps), ``tokenizer.json`` and ``meta.json``
(where the text came from, the id dtype, tokens and UTF-8 bytes per split). A nanoGPT folder used as it is
(``data=bin``) has its meta.json and tokenizer.json here and its .bin files where they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from nanogpt_runner.config.schema import DataConfig
from nanogpt_runner.data import tokenizers

SPLITS = ("train", "val")
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
    origin: str  # how the text was found: embedded, file, download or builtin (nanogpt_runner.data.sources)

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
        return {"name": self.name, "origin": self.origin, "dir": str(self.directory), "source": self.source,
                "tokenizer": self.tokenizer.kind, "vocab_size": self.vocab_size, "tokens": self.tokens,
                "bytes": self.text_bytes,
                "bytes_per_token": {s: self.text_bytes[s] / max(self.tokens[s], 1) for s in SPLITS}}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanogpt-runner"


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def _origin_before_it_was_recorded(meta: dict) -> str:
    """A corpus prepared before meta.json said its origin: its source tells (a URL, the stdlib, or a path)."""
    if meta["name"] == "pystdlib_char":
        return "builtin"
    return "download" if str(meta["source"]).startswith(("http://", "https://")) else "file"


def load_prepared(directory: Path) -> PreparedData:
    """The prepared corpus in ``directory``; a DataError naming the fix when it is unreadable."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
        tokenizer = tokenizers.load(directory)
        return PreparedData(meta["name"], directory, meta["source"], tokenizer,
                            {s: int(meta["tokens"][s]) for s in SPLITS}, {s: int(meta["bytes"][s]) for s in SPLITS},
                            np.dtype(meta["dtype"]), Path(meta.get("bin_dir") or directory),
                            meta.get("origin") or _origin_before_it_was_recorded(meta))
    except tokenizers.TokenizerUnavailable as err:
        raise DataError(str(err)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, tokenizers.TokenizerError) as err:
        raise DataError(
            f"prepared data in {directory} is unreadable ({err}); delete that folder to rebuild it"
        ) from err

