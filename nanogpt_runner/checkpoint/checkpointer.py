"""The Checkpointer, the one place in the training process that decides which checkpoint a run continues
from and when it saves.

``Checkpointer.restore`` loads the checkpoint the run continues from (checking it against the run's config
with resume_plan's rules) and ``after_step``/``save`` apply the keep/save policy. Which run and config a
launch continues was planned before, in the launcher (resume_plan.py). Storage itself is
checkpoint_folder.py's (folders, hashes) and checkpoint.py's (state dicts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from nanogpt_runner.checkpoint.folder import (
    checkpoint_dir,
    discard_after,
    find_latest,
    mark_latest,
    prune,
    resolve,
)
from nanogpt_runner.checkpoint.resume_plan import config_changes
from nanogpt_runner.checkpoint.state import PendingSave, TrainState, load_checkpoint, rank_world, start_checkpoint
from nanogpt_runner.config.schema import Config, as_dict
from nanogpt_runner.data.tokenizers import vocab_size_of
from nanogpt_runner.distributed.process_group import restart_count
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.runs.rundir import METRICS_FILE


class Checkpointer:
    """When to save and what to keep, for the training loop.

    Saves after step ``s`` when ``s`` is a multiple of ``train.ckpt_interval``, at the last step, when an
    evaluation sets a new best val loss (so the best model is always on disk), and on request (a signal).
    After each save it keeps the newest ``train.keep_last`` plus the best-by-val checkpoint. Every save
    is logged as a ``checkpoint`` event; a restore as a ``resume`` event. ``before_save`` runs on every
    rank before each save and may refuse it by raising (the loop's non-finite check: a checkpoint is only
    written once the updates in it are known to be finite).

    ``train.async_checkpoint`` (a run of several processes: DCP's sharded checkpoints) writes each save in the
    background: the state is copied to CPU memory, training goes on, and the checkpoint is published (meta.json,
    ``latest``, the event, pruning) by ``wait``, which the next save, a stop signal's save and the run's end call
    first. Until then nothing points at it: ``latest`` and ``last_good`` only name a checkpoint whose save completed."""

    def __init__(self, run_dir: Path, cfg: Config, vocab, model, optimizer, scaler, writer,
                 say: Callable[[str], None] = print, before_save: Callable[[], None] = lambda: None):
        self.run_dir, self.dir = Path(run_dir), checkpoint_dir(run_dir)
        # The data tokenizer's description: characters as a list (JSON has no tuples), a BPE as a dict.
        self.vocab = list(vocab) if isinstance(vocab, (list, tuple)) else vocab
        self.cfg, self.writer, self.say, self.before_save = cfg, writer, say, before_save
        self.interval, self.only_on_improvement = cfg.train.ckpt_interval, cfg.train.ckpt_only_on_improvement
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.config = as_dict(cfg)
        self.rank = rank_world()[0]
        self.last_saved_step = -1
        self.best_saved = math.inf
        # The newest state known good: the checkpoint restored, then each one saved. None: there is none, and
        # no message may point at one.
        self.last_good: Path | None = None
        # DCP's background collectives need a group of their own: the training thread's collectives on the same
        # group would interleave with them. gloo, as the staged copies are in CPU memory.
        self.background_group = dist.new_group(backend="gloo") \
            if cfg.train.async_checkpoint and rank_world()[1] > 1 else None
        self.pending: tuple[PendingSave, str, float | None, float, float] | None = None  # with reason, val loss, times

    def source(self) -> tuple[Path, dict] | None:
        """The checkpoint this attempt continues from, and its meta; None for a fresh start.

        Rank 0 decides (``_find_source``, which verifies the checkpoint's files) and every rank loads what it
        decided: ranks that each hashed every file of the folder did rank 0's work again, and after a
        verification error each fell back on its own, possibly to different checkpoints. Rank 0's
        CheckpointError is every rank's."""
        rank, world = rank_world()
        if world == 1:
            return self._find_source()
        decision: list = [None, None]  # (path, meta) or None, and the refusal
        if rank == 0:
            try:
                decision[0] = self._find_source()
            except CheckpointError as err:
                decision[1] = str(err)
        dist.broadcast_object_list(decision, src=0)
        if decision[1] is not None:
            raise CheckpointError(decision[1])
        return decision[0]

    def _find_source(self) -> tuple[Path, dict] | None:
        """A group that torchrun restarted (parallel.max_restarts) continues from this run directory's
        latest checkpoint: it is the same run, further along than where it started (its config still
        names, in ``resume``, the checkpoint the run was first continued from). Otherwise ``resume`` names
        the checkpoint, and with train.resume=auto this run directory's latest is used."""
        cfg = self.cfg
        if restart_count() > 0 and (own := find_latest(self.dir, self.say)) is not None:
            return own
        if cfg.resume:
            return resolve(Path(cfg.resume), "latest", self.say)
        if cfg.train.resume == "auto":
            return find_latest(self.dir, self.say)
        return None

    def restore(self) -> TrainState:
        """Load the checkpoint this run continues from (``source``); a fresh TrainState when there is none.
        Checkpoints newer than the one loaded are deleted: the resumed run replaces that part of the history."""
        found = self.source()
        if found is not None:
            path, meta = found
        else:
            metrics = self.run_dir / METRICS_FILE
            if self.rank == 0 and metrics.exists() and metrics.stat().st_size:
                self.writer.event("resume", step=0, checkpoint=None)  # an attempt that saved nothing: start over
            return TrainState()
        if meta["vocab"] != self.vocab:
            raise CheckpointError(f"{path} was trained on a different vocabulary ({vocab_size_of(meta['vocab'])} "
                                  f"tokens) than this run's data ({vocab_size_of(self.vocab)}): resume with the data "
                                  f"config it was saved with")
        changes, problems = config_changes(meta["config"], self.config)
        if problems:
            raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))
        state = load_checkpoint(path, self.model, self.optimizer, self.scaler, meta=meta)
        self.last_saved_step, self.best_saved, self.last_good = state.step, state.best_val_loss, path
        discarded = []
        if self.rank == 0 and path.parent.resolve() == self.dir.resolve():
            discarded = discard_after(self.dir, state.step)
            mark_latest(path)
        if self.rank == 0:
            self.writer.event("resume", step=state.step, checkpoint=str(path), changes=changes, discarded=discarded)
        self.say(f"resumed from {path} at step {state.step}"
                 + (f"; changed: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}" if changes else "")
                 + (f"; discarded newer checkpoints {', '.join(discarded)}" if discarded else ""))
        return state

    def after_step(self, state: TrainState, val_loss: float | None = None, final: bool = False) -> Path | None:
        """Save if step ``state.step`` is due (interval, last step, or a new best val loss; only the last
        with train.ckpt_only_on_improvement)."""
        interval = self.interval
        best = val_loss is not None and val_loss < self.best_saved
        if self.only_on_improvement:
            reason = "best" if best else None
        else:
            reason = "end" if final else "best" if best else "interval" if interval and state.step % interval == 0 \
                else None
        if reason is None:
            return None
        return self.save(state, reason, val_loss)

    def save(self, state: TrainState, reason: str, val_loss: float | None = None) -> Path | None:
        """Save now (``reason`` is recorded in the event); the published folder, or None when this step is already
        saved or is 0, or while its background write goes on (a stop signal's and the end's saves are waited for)."""
        if state.step == self.last_saved_step or state.step == 0:
            return None
        self.before_save()
        self.wait()  # the previous background save is published before this one starts
        start = time.perf_counter()
        # A failed save (a full disk included) removes its own partial folder and raises.
        pending = start_checkpoint(self.dir, state, self.model, self.optimizer, config=self.config, vocab=self.vocab,
                                   scaler=self.scaler, val_loss=val_loss, background_group=self.background_group)
        self.last_saved_step = state.step
        if val_loss is not None:
            self.best_saved = min(self.best_saved, val_loss)
        self.pending = (pending, reason, val_loss, start, time.perf_counter() - start)
        if pending.future is None or reason in ("signal", "end"):
            return self.wait()
        return None

    def wait(self) -> Path | None:
        """Publish the save in progress once its write is complete (every rank calls it); its folder, or None when
        none was in progress."""
        if self.pending is None:
            return None
        (pending, reason, val_loss, start, blocked), self.pending = self.pending, None
        path = self.last_good = pending.finish()
        if self.rank == 0:
            removed = prune(self.dir, self.cfg.train.keep_last)
            seconds = time.perf_counter() - start
            background = {"blocked_s": round(blocked, 3)} if pending.future is not None else {}
            self.writer.event("checkpoint", step=pending.step, path=str(path.relative_to(self.run_dir)), reason=reason,
                              val_loss=val_loss, seconds=round(seconds, 3), removed=removed, **background)
            detail = f", training blocked {blocked:.2f} s" if background else ""
            self.say(f"checkpoint {path.name} saved ({reason}, {seconds:.2f} s{detail})")
        return path
