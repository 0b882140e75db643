"""Multiple-choice tasks scored by a model's own loss: the task file format, loading, tokenising, and the numbers.

A task is a ``.jsonl`` or ``.parquet`` file of items, one per line (row), each with

    context   the text the model reads (non-empty)
    endings   the candidate continuations, at least two (written without a leading space)
    label     the index of the right ending (0-based)

or the name of a task that downloads once (``NAMED_TASKS``: hellaswag, converted to the fields above as
lm-evaluation-harness prepares it). Each ending is scored as lm-evaluation-harness scores a base model: the
model reads ``context + " " + ending`` and the ending's tokens are those of the whole text after the context's
own tokens (trailing spaces of the context moved to the ending first), the context cut from the left to fit
``block_size``. The summed log-likelihood of the ending picks ``acc``; divided by the ending's characters it
picks ``acc_norm`` (lm-eval's normalisation: ``len(choice)``, which is the bytes for ASCII text); divided by
its tokens it picks ``acc_token`` (nanochat's CORE rule), whose chance-corrected form is ``centered``.
No torch: the launcher checks the tasks before training, and the scoring (``evals/``) imports this.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanogpt_runner.config.schema import TASK_SUFFIXES
from nanogpt_runner.data.prepared import DataError
from nanogpt_runner.data.tokenizers import Tokenizer, TokenizerError
from nanogpt_runner.fsutil import open_regular, write_atomic

DELIMITER = " "  # between context and ending: lm-evaluation-harness's default target_delimiter
MAX_TASK_BYTES = 512 * 1024 * 1024
Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
COUNTS = ("items", "correct", "correct_norm", "correct_token", "chance")  # what ranks add up, per task


class TaskError(DataError):
    """A task that cannot be read or scored; the message names the file (or item) and the fix."""


@dataclass(frozen=True)
class Item:
    context: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    name: str
    items: tuple[Item, ...]
    source: str  # the file the items came from


@dataclass(frozen=True)
class NamedTask:
    url: str
    file: str  # the name it is kept under in the cache (and the file to place there without a network)
    convert: Callable[[dict], dict]  # one downloaded record -> {"context", "endings", "label"}


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up (tasks/hellaswag/utils.py: preprocess)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag_item(record: dict) -> dict:
    context = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    return {"context": _hellaswag_text(record["activity_label"] + ": " + context),
            "endings": [_hellaswag_text(e) for e in record["endings"]], "label": int(record["label"])}


NAMED_TASKS = {
    "hellaswag": NamedTask("https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
                           "hellaswag_val.jsonl", _hellaswag_item),
}


def task_name(spec: str) -> str:
    """What a task is called in tables and metrics: a named task's name, a file's stem."""
    return spec if spec in NAMED_TASKS else Path(spec).stem


def load_task(spec: str, cache_dir: Path, max_items: int | None = None, timeout_s: float = 10.0) -> Task:
    """The items of ``spec`` (a task file, or a name in NAMED_TASKS fetched into ``cache_dir/tasks`` once), the
    first ``max_items`` of them when given. Raises TaskError naming the file and what is wrong with it."""
    if spec in NAMED_TASKS:
        path, convert = _named_task_file(spec, Path(cache_dir) / "tasks", timeout_s), NAMED_TASKS[spec].convert
    else:
        path, convert = Path(spec), None
        if path.suffix not in TASK_SUFFIXES:
            raise TaskError(f"task {spec!r}: expected a .jsonl or .parquet file or one of {sorted(NAMED_TASKS)}")
    items = []
    for number, record in enumerate(_records(path), start=1):
        if max_items is not None and len(items) >= max_items:
            break
        try:
            items.append(_item(convert(record) if convert else record))
        except (KeyError, TypeError, ValueError) as err:
            raise TaskError(f"task {path}: item {number}: {err}; each item needs context (text), endings "
                            "(2 or more texts) and label (the right ending's index)") from None
    if not items:
        raise TaskError(f"task {path} holds no items")
    return Task(task_name(spec), tuple(items), str(path))


def _item(record: dict) -> Item:
    context, endings, label = record["context"], record["endings"], record["label"]
    if not isinstance(context, str) or not context.strip():
        raise ValueError("context must be non-empty text")
    if isinstance(endings, str) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise ValueError("endings must be a list of 2 or more non-empty texts")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(endings):
        raise ValueError(f"label must be an index into its {len(endings)} endings, not {label!r}")
    return Item(context, tuple(endings), int(label))


def _records(path: Path) -> Iterator[dict]:
    """The rows of a task file, opened as a run's files are (regular file, never through a symlink)."""
    try:
        handle = open_regular(path)
        if handle is None:
            what = "is not a regular file" if path.exists() else "does not exist"
            raise TaskError(f"task {path} {what}; give a .jsonl or .parquet task file")
        with handle:
            if os.fstat(handle.fileno()).st_size > MAX_TASK_BYTES:
                raise TaskError(f"task {path} is larger than {MAX_TASK_BYTES >> 20} MB")
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                yield from pq.read_table(handle, columns=["context", "endings", "label"]).to_pylist()
                return
            lines = handle.read().decode("utf-8").splitlines()
    except TaskError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"task {path} is unreadable ({err}); give a .jsonl or .parquet task file") from None
    except Exception as err:  # pyarrow's errors: not parquet, no such column
        raise TaskError(f"task {path}: {err}") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"task {path}: line {number} is not JSON ({err.msg})") from None


def _named_task_file(name: str, folder: Path, timeout_s: float) -> Path:
    """The named task's file in the cache, downloaded on first use; without a network, one line naming the
    file to place."""
    task = NAMED_TASKS[name]
    path = folder / task.file
    if path.is_file():
        return path
    try:
        with urllib.request.urlopen(task.url, timeout=timeout_s) as response:
            data = response.read(MAX_TASK_BYTES + 1)
    except (urllib.error.URLError, OSError) as err:
        raise TaskError(f"task {name}: cannot download {task.url} ({getattr(err, 'reason', err)}); "
                        f"place that file at {path}") from None
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data.decode("utf-8"))
    return path


@dataclass(frozen=True)
class EncodedItem:
    """One item as token rows: per ending, the ids the model reads then predicts (context + ending, cut from the
    left to ``block_size + 1``) and how many of the last ones are the ending's."""

    rows: tuple[tuple[np.ndarray, int], ...]
    label: int
    ending_chars: tuple[int, ...]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's ``_encode_pair``: trailing spaces move to the continuation, whose ids are those
    of the whole text after the context's own ids (so a token spanning the boundary is the ending's)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = [int(i) for i in tokenizer.encode(context + continuation)]
    context_ids = [int(i) for i in tokenizer.encode(context)]
    return context_ids, whole[len(context_ids):]


def encode_task(task: Task, tokenizer: Tokenizer, block_size: int) -> list[EncodedItem]:
    """Every item of ``task`` as token rows; a text the tokenizer cannot encode, or an ending longer than the
    model's context, is a TaskError naming the item."""
    encoded = []
    for number, item in enumerate(task.items, start=1):
        rows = []
        for ending in item.endings:
            try:
                context_ids, ending_ids = encode_pair(tokenizer, item.context, DELIMITER + ending)
            except TokenizerError as err:
                raise TaskError(f"task {task.source}: item {number}: {err}") from None
            if not ending_ids or len(ending_ids) > block_size:
                raise TaskError(f"task {task.source}: item {number}: an ending of {len(ending_ids)} tokens; "
                                f"endings must be 1 to block_size ({block_size}) tokens")
            rows.append((np.asarray((context_ids + ending_ids)[-(block_size + 1):], dtype=np.int64),
                         len(ending_ids)))
        encoded.append(EncodedItem(tuple(rows), item.label, tuple(len(e) for e in item.endings)))
    return encoded


def item_counts(item: EncodedItem, logliks: list[float]) -> np.ndarray:
    """One item's contribution to COUNTS from its endings' summed log-likelihoods (ties: the first ending, as
    numpy's argmax)."""
    def pick(scores: list[float]) -> int:
        return max(range(len(scores)), key=scores.__getitem__)

    per_char = [ll / chars for ll, chars in zip(logliks, item.ending_chars, strict=True)]
    per_token = [ll / n for ll, (_, n) in zip(logliks, item.rows, strict=True)]
    return np.array([1.0, pick(logliks) == item.label, pick(per_char) == item.label,
                     pick(per_token) == item.label, 1 / len(item.rows)])


def wilson_interval(correct: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (honest at small n and near 0 or 1)."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def task_result(counts: np.ndarray) -> dict[str, float]:
    """A task's numbers from its summed COUNTS: accuracies, CORE's centered accuracy (``acc_token`` corrected for
    chance, 1/endings per item: 0 is guessing, 1 is perfect), the 95% interval of ``acc`` and the items."""
    items, correct, correct_norm, correct_token, chance = (float(c) for c in counts)
    low, high = wilson_interval(correct, items)
    baseline = chance / items
    acc_token = correct_token / items
    return {"acc": correct / items, "acc_norm": correct_norm / items, "acc_token": acc_token,
            "centered": (acc_token - baseline) / (1 - baseline), "acc_low": low, "acc_high": high,
            "items": int(round(items))}


def macro_mean(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Several tasks as one number each (their plain mean, as CORE averages tasks); the interval of the mean
    accuracy from the tasks' binomial variances (one task: its own Wilson interval)."""
    if len(results) == 1:
        return dict(next(iter(results.values())))
    mean = {key: sum(r[key] for r in results.values()) / len(results)
            for key in ("acc", "acc_norm", "acc_token", "centered")}
    half = Z_95 * math.sqrt(sum(r["acc"] * (1 - r["acc"]) / r["items"] for r in results.values())) / len(results)
    return {**mean, "acc_low": max(mean["acc"] - half, 0.0), "acc_high": min(mean["acc"] + half, 1.0),
            "items": sum(r["items"] for r in results.values())}


def task_problems(specs: list[str], tokenizer: Tokenizer, block_size: int, cache_dir: Path,
                  max_items: int | None, timeout_s: float) -> list[str]:
    """Every task of ``eval.tasks`` that cannot be read or encoded for this run, one sentence each (the
    launcher's check, before training)."""
    names = [task_name(spec) for spec in specs]
    problems = [f"eval.tasks names {name} twice: each task is reported by its name, so give each file another name"
                for name in sorted({n for n in names if names.count(n) > 1})]
    for spec in specs:
        try:
            encode_task(load_task(spec, cache_dir, max_items, timeout_s), tokenizer, block_size)
        except TaskError as err:
            problems.append(f"eval.tasks: {err}")
    return problems
