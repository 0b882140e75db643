"""Tokenizers: text to token ids and back, the same way in preparation, training, sampling and the viewer.

    char   one id per character of the corpus (nanoGPT's shakespeare_char); documents joined by a newline
    gpt2   GPT-2's byte-level BPE through tiktoken (nanoGPT's openwebtext and shakespeare); 50,257 ids
    bpe    a byte-level BPE trained on the corpus itself with Hugging Face ``tokenizers`` (works offline)

A tokenizer is fully described by a JSON value (``describe()``: a character vocabulary is the list of its
characters, as checkpoints have always stored it; a BPE is an object with its kind and vocab_size), kept
beside the prepared data as tokenizer.json and inside every checkpoint as its vocabulary, so whatever
decodes a run's tokens decodes them as it was trained; nothing here is ever pickled to disk.
``token_bytes()`` (the UTF-8 bytes each id stands for) is what turns a loss per token into bits per byte,
the number that compares runs across tokenizers.

This module imports no torch: preparation's worker processes import it, and start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

END_OF_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(Exception):
    """A tokenizer cannot be built or cannot encode a text; the message names the problem and the fix."""


class TokenizerUnavailable(TokenizerError):
    """The tokenizer needs files this machine does not have (GPT-2's BPE files without internet)."""


class Tokenizer(ABC):
    kind: str
    vocab_size: int  # ids 0 .. vocab_size-1 stand for text
    separator: list[int]  # the ids placed between two documents

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text`` (a signed integer array)."""

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each id stands for (0 for the end-of-text token), one entry per id."""

    @abstractmethod
    def describe(self) -> list | dict:
        """Everything needed to rebuild this tokenizer (``from_description``): plain JSON values."""

    def token_dtype(self) -> np.dtype:
        """uint16 when every id fits (nanoGPT's format), else uint32."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)


class CharTokenizer(Tokenizer):
    """One id per character, in the order given (sorted code points when the vocabulary comes from a corpus)."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("a character vocabulary must be a list of distinct single characters")
        self.chars = tuple(chars)
        self.vocab_size = len(self.chars)
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        # A table from code point to id (-1: not in the vocabulary): one gather per character.
        self._ids = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
        self._ids[codes] = np.arange(self.vocab_size)
        self.separator = self.encode("\n").tolist() if "\n" in self.chars else []

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._ids[np.minimum(codes, len(self._ids) - 1)]
        unknown = (ids < 0) | (codes >= len(self._ids))
        if unknown.any():
            missing = sorted({chr(c) for c in codes[unknown].tolist()})
            raise TokenizerError(f"characters outside this vocabulary of {self.vocab_size}: "
                                 f"{' '.join(repr(c) for c in missing)}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], dtype=np.int64)

    def describe(self) -> list:
        return list(self.chars)


def char_vocabulary(texts: Iterable[str]) -> list[str]:
    """The sorted distinct characters of ``texts``."""
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return sorted(seen)


class Gpt2Tokenizer(Tokenizer):
    """GPT-2's BPE, or any tiktoken encoding with an end-of-text token (tests build a small one themselves)."""

    kind = "gpt2"

    def __init__(self, encoding=None):
        self.encoding = encoding if encoding is not None else gpt2_encoding()
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token
        self.separator = [self.eot_id]

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.encoding.encode_ordinary(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode([i for i in ids if i < self.vocab_size])

    def token_bytes(self) -> np.ndarray:
        special = {self.encoding.encode_single_token(s) for s in self.encoding.special_tokens_set}
        return np.array([0 if i in special else len(self.encoding.decode_single_token_bytes(i))
                         for i in range(self.vocab_size)], dtype=np.int64)

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def tiktoken_cache_dir() -> Path:
    """Where tiktoken keeps the BPE files it downloads (its own rule: TIKTOKEN_CACHE_DIR, else a temp folder)."""
    explicit = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "data-gym-cache"


def gpt2_encoding():
    """tiktoken's GPT-2 encoding; downloads its two files once into tiktoken's cache. Without them and without
    internet: TokenizerUnavailable, naming the folder they must be in and how to get them there."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as err:  # requests' errors are OSErrors; a hash mismatch is a ValueError
        raise TokenizerUnavailable(
            f"GPT-2's BPE files are not in tiktoken's cache {tiktoken_cache_dir()} and could not be downloaded "
            f"({type(err).__name__}); on a machine with internet run "
            f"python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" with TIKTOKEN_CACHE_DIR set to a folder, "
            f"copy that folder here and set TIKTOKEN_CACHE_DIR to it") from None


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class BpeTokenizer(Tokenizer):
    """A byte-level BPE (Hugging Face ``tokenizers``) whose merges were learned from the corpus."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eot_id = hf_tokenizer.token_to_id(END_OF_TEXT)
        self.separator = [self.eot_id]

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BpeTokenizer:
        """Learn ``vocab_size`` ids (256 bytes, end-of-text, merges) from ``texts``, streamed."""
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HfTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.int64) for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        alphabet = _bytes_to_unicode()
        sizes = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.hf.get_vocab(with_added_tokens=False).items():
            sizes[i] = sum(1 for ch in token if ch in alphabet)
        sizes[self.eot_id] = 0
        return sizes

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "tokenizer": json.loads(self.hf.to_str())}


def vocab_size_of(description) -> int:
    """The vocabulary size a description records, without building the tokenizer (GPT-2's needs its files)."""
    return len(description) if isinstance(description, list) else int(description["vocab_size"])


def from_description(description) -> Tokenizer:
    """The tokenizer ``describe()`` wrote."""
    if isinstance(description, list):
        return CharTokenizer(description)
    kind = description.get("kind") if isinstance(description, dict) else None
    try:
        if kind == "gpt2":
            return Gpt2Tokenizer()
        if kind == "bpe":
            from tokenizers import Tokenizer as HfTokenizer

            return BpeTokenizer(HfTokenizer.from_str(json.dumps(description["tokenizer"])))
    except TokenizerError:
        raise
    except Exception as err:  # a missing key, a wrong type, or whatever Hugging Face's parser raises
        raise TokenizerError(f"the {kind} tokenizer description is damaged ({type(err).__name__}: {err})") from None
    raise TokenizerError(f"unknown tokenizer kind {kind!r}: expected char, gpt2 or bpe")


def save(tokenizer: Tokenizer, directory: Path) -> None:
    (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(tokenizer.describe()), encoding="utf-8")


def load(directory: Path) -> Tokenizer:
    path = Path(directory) / TOKENIZER_FILE
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TokenizerError(f"{path} is unreadable ({err})") from None
    return from_description(description)


# Preparation's worker processes: each receives the tokenizer once, then encodes chunk after chunk.
_worker_tokenizer: Tokenizer | None = None


def init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def encode_chunk(pieces: list[tuple[str, bool]], tokenizer: Tokenizer | None = None) -> np.ndarray:
    """The ids of a chunk of the corpus: ``pieces`` are (text, starts a new document) in corpus order; a new
    document is preceded by the tokenizer's separator. Returned in the tokenizer's storage dtype."""
    tok = tokenizer or _worker_tokenizer
    parts = []
    for (_, new_document), ids in zip(pieces, tok.encode_many([text for text, _ in pieces]), strict=True):
        if new_document:
            parts.append(np.array(tok.separator, dtype=np.int64))
        parts.append(ids)
    return np.concatenate(parts, dtype=tok.token_dtype(), casting="unsafe") if parts else np.zeros(0, tok.token_dtype())
