"""Preparing a corpus: the source streamed through the tokenizer into token files, atomically and resumably.

``prepare(cfg)`` returns the prepared corpus ``cfg.data`` names, building it on first use. Its cache entry
is named by a key made of the source (every file's path, size and mtime, or the URL), the tokenizer and its
settings and the split fraction: two sources never share an entry, and a changed file is prepared again.

Building reads the source in chunks of about 4 MB, tokenizes them in ``data.num_proc`` worker processes
(at most two chunks per worker in flight, so memory stays flat whatever the corpus size), and appends the
ids to ``tokens.bin`` in corpus order. Everything happens in ``<entry>.partial/``; ``progress.json`` there
records the chunks, tokens and bytes already on disk and is rewritten after each chunk. Only a finished
folder is renamed to the entry's name, so a crash or Ctrl-C never leaves one that looks finished, and the
next run continues from progress.json (or starts over when there is none) and says which. At the end the
last ``val_fraction`` of the tokens is copied to ``val.bin`` and the rest becomes ``train.bin``.

``data=bin`` uses a folder nanoGPT's prepare.py wrote (train.bin, val.bin, maybe meta.pkl) where it is:
only meta.json and tokenizer.json are written, to the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nanogpt_runner.config.schema import DataConfig
from nanogpt_runner.data import tokenizers
from nanogpt_runner.data.prepared import FORMAT, META_FILE, SPLITS, DataError, PreparedData, cache_dir, load_prepared
from nanogpt_runner.data.sources import (
    Piece,
    Source,
    download_source,
    embedded_source,
    file_source,
    pystdlib_source,
)
from nanogpt_runner.fsutil import write_atomic
from nanogpt_runner.safe_pickle import UnsafePickleError, load_plain

CHUNK_BYTES = 4 << 20
SCAN_TOKENS = 1 << 20  # ids read at a time when copying or scanning a token file
PROGRESS_FILE = "progress.json"
TOKENS_FILE = "tokens.bin"
HF_PARALLELISM = "TOKENIZERS_PARALLELISM"  # Hugging Face tokenizers' own thread pool
SHAKESPEARE = ("shakespeare_char", "shakespeare")
MIN_TOKENS = 4  # a corpus shorter than this cannot give a train and a val split


class WorkerDied(DataError):
    """A tokenizer worker process died mid-preparation: the chunks done so far are kept for a rerun."""


def too_little_text(source: Source, tokens: int) -> DataError:
    return DataError(f"{source.description} holds only {tokens} tokens: give it more text")


def prepare(cfg: DataConfig, announce=print, chunk_bytes: int = CHUNK_BYTES) -> PreparedData:
    """Find or build the prepared corpus that ``cfg`` names; ``announce`` receives what a user should read.

    tiny-shakespeare (shakespeare_char, shakespeare) is read from ``data.path`` when set, else downloaded from
    ``data.url`` when set (once: the prepared entry is found again offline), else the copy shipped in the
    package. Nothing stands in for a source that fails: the failure is a DataError naming the fix."""
    root = cache_dir(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)  # before any download: an unusable cache is said at once
        if cfg.name == "bin":
            return _adopt_bin_folder(Path(cfg.path).expanduser().resolve(), root, announce)
        if _downloads(cfg) and (_entry(root, cfg, cfg.name, cfg.url) / META_FILE).exists():
            return load_prepared(_entry(root, cfg, cfg.name, cfg.url))
        source = _source(cfg)
        entry = _entry(root, cfg, source.name, source.identity)
        with _locked(entry):
            if not (entry / META_FILE).exists():
                try:
                    _build(entry, source, cfg, announce, chunk_bytes)
                except WorkerDied:
                    raise  # the chunks done so far are kept, for the next run to continue
                except (DataError, tokenizers.TokenizerError):
                    # The source itself cannot be prepared (its content, too little text, a tokenizer's files):
                    # nothing for a rerun to continue, which would otherwise say it found an interrupted one.
                    shutil.rmtree(_work_dir(entry), ignore_errors=True)
                    raise
        return load_prepared(entry)
    except tokenizers.TokenizerError as err:
        raise DataError(str(err)) from None
    except OSError as err:  # a cache folder that cannot be made or written, a full disk, an unreadable source
        raise DataError(f"preparing the data failed: {err.strerror or err} ({err.filename}): data.cache_dir={root} "
                        f"must be a folder you can write, with room for the tokens, and data.path one you can "
                        f"read") from None


def _downloads(cfg: DataConfig) -> bool:
    return cfg.name in SHAKESPEARE and cfg.path is None and cfg.url is not None


def _source(cfg: DataConfig) -> Source:
    """The text ``cfg`` names: each built-in corpus is chosen by its own name, never put in another's place."""
    if cfg.name == "pystdlib_char":
        return pystdlib_source()
    if cfg.name in SHAKESPEARE and cfg.path is None:
        if cfg.url is None:
            return embedded_source(cfg.name)
        try:
            return download_source(cfg.name, cfg.url, cfg.download_timeout_s)
        except (OSError, ValueError) as err:
            raise DataError(f"downloading data.url={cfg.url} failed ({err}): check the address and the network, or "
                            f"leave data.url unset (null) to train on the tiny-shakespeare copy shipped in the "
                            f"package") from None
    return file_source(cfg.name, Path(cfg.path).expanduser().resolve(), cfg.text_field)


def _entry(root: Path, cfg: DataConfig, name: str, identity: str) -> Path:
    settings = {"source": identity, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction, "format": FORMAT}
    if cfg.tokenizer == "bpe":
        settings["vocab_size"] = cfg.vocab_size
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{name}-{cfg.tokenizer}-{key}"


@contextmanager
def _locked(entry: Path):
    """One preparer per entry at a time (sweep jobs, or two terminals, may ask for the same corpus at once)."""
    locks = entry.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / entry.name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Progress:
    """What progress.json records: the state on disk after the last whole chunk."""

    chunk_bytes: int
    dtype: str
    stage: str = "encode"  # encode: chunks are being appended | split: val.bin is written
    chunks: int = 0
    tokens: int = 0
    text_bytes: int = 0
    val_bytes: int = 0


def _read_progress(work: Path) -> Progress | None:
    """progress.json, or None when it is missing or damaged (the preparation then starts over)."""
    try:
        progress = Progress(**json.loads((work / PROGRESS_FILE).read_text()))
        np.dtype(progress.dtype)
        return progress
    except (OSError, ValueError, TypeError):
        return None


def _write_progress(work: Path, progress: Progress) -> None:
    write_atomic(work / PROGRESS_FILE, json.dumps(asdict(progress)))


def _work_dir(entry: Path) -> Path:
    return entry.with_name(f"{entry.name}.partial")


def _build(entry: Path, source: Source, cfg: DataConfig, announce, chunk_bytes: int) -> None:
    work = _work_dir(entry)
    tokenizer = None
    progress = _read_progress(work) if work.exists() else None
    tokens_on_disk = (work / TOKENS_FILE).stat().st_size if (work / TOKENS_FILE).exists() else 0
    if progress is not None and progress.chunk_bytes == chunk_bytes and (
            progress.stage == "split" or tokens_on_disk >= progress.tokens * np.dtype(progress.dtype).itemsize):
        tokenizer = _saved_tokenizer(work)
    if tokenizer is not None:
        announce(f"continuing the interrupted preparation of {source.description} in {work}: {progress.chunks} "
                 f"chunks ({progress.tokens:,} tokens) were already done")
    else:
        if work.exists():
            announce(f"starting over: {work} was left by an interrupted preparation without a usable record of "
                     f"its progress")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        tokenizer = _fit_tokenizer(source, cfg, announce)
        tokenizers.save(tokenizer, work)
        progress = Progress(chunk_bytes, tokenizer.token_dtype().str)
        _write_progress(work, progress)
    if progress.stage == "encode":
        progress = _encode(work, source, tokenizer, progress, cfg.num_proc or os.cpu_count() or 1, announce)
    _finish(work, entry, source, tokenizer, progress, cfg.val_fraction, announce)


def _saved_tokenizer(work: Path) -> tokenizers.Tokenizer | None:
    """The tokenizer an interrupted preparation fitted; None when its file is damaged (then it starts over)."""
    try:
        return tokenizers.load(work)
    except tokenizers.TokenizerUnavailable:
        raise
    except tokenizers.TokenizerError:
        return None


def _fit_tokenizer(source: Source, cfg: DataConfig, announce) -> tokenizers.Tokenizer:
    """char: the corpus's characters (one pass); bpe: merges learned from the corpus (one pass); gpt2: GPT-2's."""
    if cfg.tokenizer == "gpt2":
        return tokenizers.Gpt2Tokenizer()
    if cfg.tokenizer == "bpe":
        announce(f"training a byte-level BPE tokenizer of {cfg.vocab_size} ids on {source.description}")
        return tokenizers.BpeTokenizer.train((text for text, _ in source.pieces()), cfg.vocab_size)
    seen = np.zeros(sys.maxunicode + 1, dtype=bool)  # by code point
    for text, new_document in source.pieces():
        seen[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)] = True
        seen[ord("\n")] |= new_document
    if not seen.any():
        raise too_little_text(source, 0)
    return tokenizers.CharTokenizer([chr(c) for c in np.flatnonzero(seen)])


def _chunks(pieces: Iterable[Piece], chunk_bytes: int) -> Iterator[list[Piece]]:
    chunk, size = [], 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece[0])
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(work: Path, source: Source, tokenizer: tokenizers.Tokenizer, progress: Progress, num_proc: int,
            announce) -> Progress:
    """Append the ids of every chunk not yet done to tokens.bin; progress.json follows each one to disk."""
    token_bytes = tokenizer.token_bytes()
    itemsize = np.dtype(progress.dtype).itemsize
    chunks = itertools.islice(_chunks(source.pieces(), progress.chunk_bytes), progress.chunks, None)
    workers = num_proc if source.total_bytes > progress.chunk_bytes else 1
    start = time.perf_counter()
    with open(work / TOKENS_FILE, "ab") as out, _progress_bar(f"tokenizing ({tokenizer.kind})", source.total_bytes,
                                                             progress.text_bytes, progress.tokens) as bar:
        out.truncate(progress.tokens * itemsize)  # whatever a crash left after the last recorded chunk
        for ids in _encoded(tokenizer, chunks, workers, work, source):
            out.write(ids.tobytes())
            out.flush()
            os.fsync(out.fileno())
            progress = replace(progress, chunks=progress.chunks + 1, tokens=progress.tokens + len(ids),
                               text_bytes=progress.text_bytes + int(token_bytes[ids].sum()))
            _write_progress(work, progress)
            bar(progress.text_bytes, progress.tokens)
    seconds = time.perf_counter() - start
    announce(f"tokenized {source.description}: {progress.tokens:,} tokens from {progress.text_bytes / 1e6:,.1f} MB "
             f"of text in {seconds:.1f} s ({workers} process{'es' if workers > 1 else ''})")
    return progress


def _encoded(tokenizer: tokenizers.Tokenizer, chunks: Iterator[list[Piece]], workers: int, work: Path,
             source: Source) -> Iterator[np.ndarray]:
    """The ids of each chunk, in order. With several workers at most two chunks per worker are in flight."""
    if workers <= 1:
        yield from (tokenizers.encode_chunk(chunk, tokenizer) for chunk in chunks)
        return
    pool = ProcessPoolExecutor(workers, mp_context=_worker_context(), initializer=tokenizers.init_worker,
                               initargs=(tokenizer,))
    pending = deque()
    parallelism = os.environ.get(HF_PARALLELISM)
    os.environ[HF_PARALLELISM] = "false"  # one thread per worker: the processes are the parallelism
    try:
        for chunk in chunks:
            pending.append(pool.submit(tokenizers.encode_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise WorkerDied(f"a tokenizer worker process died (killed, or out of memory?) while preparing "
                         f"{source.description}; the chunks done so far are kept in {work}: run again to continue, "
                         f"with a lower data.num_proc if memory is short") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if parallelism is None:
            os.environ.pop(HF_PARALLELISM, None)
        else:
            os.environ[HF_PARALLELISM] = parallelism


def _worker_context():
    """fork on Linux: a worker starts in milliseconds with the tokenizer already in memory, where spawn would
    re-import the program that called prepare (nanogpt-run: torch and Hydra) in every worker."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if sys.platform == "linux" and "fork" in methods else "spawn")


def _finish(work: Path, entry: Path, source: Source, tokenizer: tokenizers.Tokenizer, progress: Progress,
            val_fraction: float, announce) -> None:
    """Split tokens.bin into train.bin and val.bin (each step safe to repeat), then publish the folder."""
    total = progress.tokens
    if total < MIN_TOKENS:
        raise too_little_text(source, total)
    cut = int(total * (1 - val_fraction))
    if progress.stage == "encode":
        token_bytes = tokenizer.token_bytes()
        tokens = np.memmap(work / TOKENS_FILE, dtype=progress.dtype, mode="r", shape=(total,))
        val_bytes = 0
        with open(work / "val.bin", "wb") as out:
            for start in range(cut, total, SCAN_TOKENS):
                part = np.asarray(tokens[start:start + SCAN_TOKENS])
                out.write(part.tobytes())
                val_bytes += int(token_bytes[part].sum())
            out.flush()
            os.fsync(out.fileno())
        del tokens
        progress = replace(progress, stage="split", val_bytes=val_bytes)
        _write_progress(work, progress)
    if (work / TOKENS_FILE).exists():
        os.truncate(work / TOKENS_FILE, cut * np.dtype(progress.dtype).itemsize)
        os.replace(work / TOKENS_FILE, work / "train.bin")
    _publish(work, entry, {
        "name": source.name, "origin": source.origin, "source": source.description, "tokenizer": tokenizer.kind,
        "dtype": progress.dtype,
        "tokens": {"train": cut, "val": total - cut},
        "bytes": {"train": progress.text_bytes - progress.val_bytes, "val": progress.val_bytes},
    })
    announce(f"prepared {source.description} ({tokenizer.kind}, {tokenizer.vocab_size:,} ids): {cut:,} train and "
             f"{total - cut:,} val tokens in {entry}")


def _publish(work: Path, entry: Path, meta: dict) -> None:
    (work / PROGRESS_FILE).unlink(missing_ok=True)
    (work / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    os.replace(work, entry)


@contextmanager
def _progress_bar(description: str, total_bytes: int, done_bytes: int, done_tokens: int):
    """A rich bar on a terminal (bytes, tokens, MB/s, ETA); nothing elsewhere. Yields update(bytes, tokens)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda text_bytes, tokens: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[tokens]}"),
                  TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(description, total=max(total_bytes, 1), completed=done_bytes,
                            tokens=f"{done_tokens:,} tokens")
        yield lambda text_bytes, tokens: bar.update(task, completed=min(text_bytes, total_bytes),
                                                    tokens=f"{tokens:,} tokens")
        bar.update(task, completed=total_bytes)


def _adopt_bin_folder(folder: Path, root: Path, announce) -> PreparedData:
    """nanoGPT's prepared folder, used in place: its meta.pkl's characters when present, GPT-2's BPE otherwise."""
    files = {split: folder / f"{split}.bin" for split in SPLITS}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"data.path={folder} has no {path.name}: data=bin reads a folder that nanoGPT's "
                            f"prepare.py wrote (train.bin, val.bin and, for a character vocabulary, meta.pkl)")
        if path.stat().st_size % 2:
            raise DataError(f"{path} has an odd number of bytes: nanoGPT's .bin files hold uint16 ids")
    meta_pkl = folder / "meta.pkl"
    stats = [(f, f.stat()) for f in (*files.values(), meta_pkl) if f.exists()]
    identity = ";".join(f"{f}:{s.st_size}:{s.st_mtime_ns}" for f, s in stats)
    entry = root / f"bin-{hashlib.sha256(f'{identity}|{FORMAT}'.encode()).hexdigest()[:16]}"
    with _locked(entry):
        if not (entry / META_FILE).exists():
            tokenizer = _bin_tokenizer(meta_pkl)
            counts = {split: _scan_bin(path, tokenizer) for split, path in files.items()}
            work = entry.with_name(f"{entry.name}.partial")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            tokenizers.save(tokenizer, work)
            _publish(work, entry, {
                "name": "bin", "origin": "file", "source": str(folder), "tokenizer": tokenizer.kind, "dtype": "uint16",
                "bin_dir": str(folder), "tokens": {s: counts[s][0] for s in SPLITS},
                "bytes": {s: counts[s][1] for s in SPLITS},
            })
            announce(f"using nanoGPT's prepared folder {folder} ({tokenizer.kind}, {tokenizer.vocab_size:,} ids): "
                     f"{counts['train'][0]:,} train and {counts['val'][0]:,} val tokens")
    return load_prepared(entry)


def _bin_tokenizer(meta_pkl: Path) -> tokenizers.Tokenizer:
    if not meta_pkl.exists():
        return tokenizers.Gpt2Tokenizer()
    try:
        meta = load_plain(meta_pkl)
    except UnsafePickleError as err:
        raise DataError(f"{meta_pkl} was refused: {err}. nanoGPT's prepare.py writes only plain values there; "
                        f"delete it if the .bin files hold GPT-2 tokens, or prepare the folder again") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{meta_pkl} is unreadable ({err}): prepare the folder again") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        raise DataError(f"{meta_pkl} has no character table (an 'itos' dict of ids 0..n-1): data=bin understands "
                        f"nanoGPT's character vocabularies and, without meta.pkl, GPT-2's")
    return tokenizers.CharTokenizer([itos[i] for i in range(len(itos))])


def _scan_bin(path: Path, tokenizer: tokenizers.Tokenizer) -> tuple[int, int]:
    """Tokens and UTF-8 bytes of a .bin file, checking every id against the vocabulary."""
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    token_bytes = tokenizer.token_bytes()
    text_bytes = 0
    with _progress_bar(f"reading {path.name}", path.stat().st_size, 0, 0) as bar:
        for start in range(0, len(tokens), SCAN_TOKENS):
            part = np.asarray(tokens[start:start + SCAN_TOKENS])
            if (largest := int(part.max(initial=0))) >= tokenizer.vocab_size:
                raise DataError(f"{path} holds id {largest}, outside the {tokenizer.kind} vocabulary of "
                                f"{tokenizer.vocab_size}: is this folder's meta.pkl missing or from another corpus?")
            text_bytes += int(token_bytes[part].sum())
            bar(2 * (start + len(part)), start + len(part))
    return len(tokens), text_bytes
