"""Multiple-choice tasks (``data/tasks.py``) scored by the model's own log-likelihoods, on any layout.

Each ending of an item is one row: the context and ending's ids, the ending's targets kept and every other
target ignored. Rows are packed ``batch_size`` to a forward pass; a pipeline needs the training batch's shape,
so under pp (and torch.compile, which would compile again for each length) rows are padded to ``block_size``,
otherwise to the longest row of the batch (the model is causal: padding after a row changes nothing in it).

In the loop, item ``i`` goes to data-parallel rank ``i % dp``; every rank of one data-parallel coordinate
(tensor-parallel peers, pipeline stages) scores the same items, and every rank runs as many forward passes as
the busiest (a shorter share is padded with empty batches), because FSDP's gathers, the tensor-parallel
reductions and the pipeline's sends are collectives. The per-task counts of the ranks holding logits are
all-reduced, so the numbers do not depend on the layout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanogpt_runner.config.schema import Config
from nanogpt_runner.data.tasks import COUNTS, EncodedItem, encode_task, item_counts, load_task, task_result
from nanogpt_runner.data.tokenizers import Tokenizer
from nanogpt_runner.distributed.parallelize import Parallelized

IGNORED = -100  # a target that is not the ending's: cross-entropy's default ignore_index

Row = tuple[np.ndarray, int]  # ids (context + ending), and how many of the last ones are the ending's


def pack(rows: list[Row], batch_size: int, length: int | None, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Rows as a ``(batch_size, L)`` input and targets (IGNORED but at each row's ending); empty places are
    padding rows. ``length`` None: L is the longest row's."""
    length = length or max([len(ids) - 1 for ids, _ in rows] or [1])
    x = torch.zeros(batch_size, length, dtype=torch.long)
    y = torch.full((batch_size, length), IGNORED, dtype=torch.long)
    for i, (ids, ending) in enumerate(rows):
        ids = torch.as_tensor(ids)
        x[i, :len(ids) - 1] = ids[:-1]
        y[i, len(ids) - 1 - ending:len(ids) - 1] = ids[-ending:]
    return x.to(device), y.to(device)


def row_logliks(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its kept targets (fp32, as lm-evaluation-harness sums them)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(y != IGNORED, picked, 0.0).sum(-1)


def item_logliks(items: list[EncodedItem], logits_of: Callable[[torch.Tensor], torch.Tensor | None],
                 batch_size: int, length: int | None, device: torch.device,
                 passes: int = 0) -> list[list[float]] | None:
    """Each item's endings' summed log-likelihoods (None on a rank without logits), in at least ``passes``
    forward passes."""
    rows = [row for item in items for row in item.rows]
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    chunks += [[]] * (passes - len(chunks))
    logliks: list[float] | None = []
    for chunk in chunks:
        x, y = pack(chunk, batch_size, length, device)
        logits = logits_of(x)
        if logits is None:
            logliks = None
        elif logliks is not None:
            logliks += row_logliks(logits, y)[:len(chunk)].tolist()
    if logliks is None:
        return None
    ends = np.cumsum([len(item.rows) for item in items])
    return [logliks[end - len(item.rows):end] for item, end in zip(items, ends, strict=True)]


def task_counts(items: list[EncodedItem], logits_of: Callable[[torch.Tensor], torch.Tensor | None],
                batch_size: int, length: int | None, device: torch.device, passes: int = 0) -> np.ndarray | None:
    """The summed COUNTS of ``items`` (None on a rank without logits)."""
    logliks = item_logliks(items, logits_of, batch_size, length, device, passes)
    if logliks is None:
        return None
    return sum((item_counts(item, ll) for item, ll in zip(items, logliks, strict=True)), np.zeros(len(COUNTS)))


def forward_passes(items: list[EncodedItem], batch_size: int) -> int:
    return math.ceil(sum(len(item.rows) for item in items) / batch_size)


def load_tasks(specs: list[str], tokenizer: Tokenizer, block_size: int, cache_dir: Path, max_items: int | None,
               timeout_s: float) -> dict[str, list[EncodedItem]]:
    """Each task of ``specs`` by name, its items encoded (raises TaskError)."""
    tasks = {}
    for spec in specs:
        task = load_task(spec, cache_dir, max_items, timeout_s)
        tasks[task.name] = encode_task(task, tokenizer, block_size)
    return tasks


class TaskEvaluator:
    """The loop's tasks (``eval.tasks``): scored at evaluation steps every ``eval.task_interval`` steps (and at the
    first and last evaluation), sharded over the data-parallel ranks. ``seconds`` is the time spent scoring."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, par: Parallelized, autocast, cache_dir: Path):
        ev = cfg.eval
        self.par, self.autocast = par, autocast
        self.tasks = load_tasks(ev.tasks, tokenizer, cfg.model.block_size, cache_dir, ev.max_items,
                                cfg.data.download_timeout_s)
        self.interval = ev.task_interval or cfg.train.eval_interval
        self.batch_size = cfg.train.batch_size
        self.length = cfg.model.block_size if par.layout.pp > 1 or cfg.train.compile else None
        self.seconds = 0.0

    def due(self, step: int, final: bool) -> bool:
        return final or step % self.interval == 0

    def run(self) -> dict[str, dict[str, float]]:
        """Every task's numbers (``data.tasks.task_result``), the same on every rank. Collective."""
        start, layout = time.perf_counter(), self.par.layout
        self.par.module.eval()
        counts = np.zeros((len(self.tasks), len(COUNTS)))
        for row, items in enumerate(self.tasks.values()):
            passes = max(forward_passes(items[r::layout.dp], self.batch_size) for r in range(layout.dp))
            mine = task_counts(items[layout.dp_rank::layout.dp], lambda x: self.par.eval_logits(x, self.autocast),
                               self.batch_size, self.length, layout.device, passes)
            if mine is not None:
                counts[row] = mine
        self.par.module.train()
        if layout.world > 1:  # a sum over the data-parallel replicas: tensor-parallel peers hold the same counts
            total = torch.as_tensor(counts, dtype=torch.float64, device=layout.device)
            dist.all_reduce(total)
            counts = total.cpu().numpy() / layout.tp
        self.seconds += time.perf_counter() - start
        return {name: task_result(counts[row]) for row, name in enumerate(self.tasks)}


def score_model(model: torch.nn.Module, tasks: dict[str, list[EncodedItem]], batch_size: int,
                device: torch.device) -> dict[str, dict[str, float]]:
    """Each task's numbers for one whole model in this process (``nanogpt-eval``)."""
    model.eval()
    with torch.no_grad():
        return {name: task_result(task_counts(items, lambda x: model(x)[0], batch_size, None, device))
                for name, items in tasks.items()}


def evaluate_checkpoint(target: Path, specs: list[str], which: str = "best", max_items: int | None = None,
                        batch_size: int = 16, device: str = "cpu", cache_dir: Path | None = None,
                        timeout_s: float = 10.0, announce=print) -> dict[str, dict[str, float]]:
    """``nanogpt-eval``: each task's numbers for the model of checkpoint ``target`` (a run directory, its
    ``which`` checkpoint, or a checkpoint folder; sharded or not), encoded with the tokenizer the checkpoint
    records. Raises TaskError, SampleError or CheckpointError with a message fit to show a user."""
    from dataclasses import fields

    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_model_state
    from nanogpt_runner.config.schema import ModelConfig
    from nanogpt_runner.data.prepared import default_cache_dir
    from nanogpt_runner.data.tokenizers import from_description
    from nanogpt_runner.model.gpt import GPT
    from nanogpt_runner.weights.sample import check_shapes

    path, meta = resolve(target, which, announce)
    tokenizer = from_description(meta["vocab"])
    saved = meta["config"]["model"]
    model_cfg = ModelConfig(**{f.name: saved[f.name] for f in fields(ModelConfig) if f.name in saved})
    tasks = load_tasks(specs, tokenizer, model_cfg.block_size, cache_dir or default_cache_dir(), max_items, timeout_s)
    weights = load_model_state(path, meta)
    check_shapes(path, model_cfg, tokenizer.vocab_size, weights)
    model = GPT(model_cfg, tokenizer.vocab_size)
    model.load_state_dict(weights)
    announce(f"scoring {path} ({sum(map(len, tasks.values()))} items)")
    return score_model(model.to(device), tasks, batch_size, torch.device(device))
