"""Resuming a run: what may change when it continues, and the Checkpointer, the one place that decides
which checkpoint a run continues from and when it saves.

Two moments use this module. Before a run directory is chosen, the launcher's ``plan_resume`` decides
whether this launch continues a run, in which directory, and with which config (the checkpoint's, plus
the overrides the command line names, refusing changes to FIXED_FIELDS). Inside the training process,
``Checkpointer.restore`` loads the checkpoint the run continues from and ``after_step``/``save`` apply the
keep/save policy. Storage itself is checkpoint_folder.py's (folders, hashes) and checkpoint.py's (state dicts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nanogpt_runner.checkpoint import TrainState, load_checkpoint, rank_world, save_checkpoint
from nanogpt_runner.checkpoint_folder import (
    checkpoint_dir,
    discard_after,
    find_latest,
    mark_latest,
    prune,
    remove_temporaries,
    resolve,
)
from nanogpt_runner.config import Config, flatten
from nanogpt_runner.process_group import restart_count
from nanogpt_runner.run_control import CheckpointError
from nanogpt_runner.runs import CHECKPOINT_DIR, METRICS_FILE, read_run
from nanogpt_runner.tokenizer import vocab_size_of

# Config fields a resumed run cannot change. The architecture must match the saved tensors; the data
# identity and the seed decide which sequences every step trains on (and so what "step k" means). The
# global batch (data-parallel replicas x batch_size x grad_accum) must stay too: how it is split between
# ranks and micro-steps may change, see global_batch_problem.
FIXED_FIELDS = {
    "model.n_layer": "architecture comes from the checkpoint",
    "model.n_head": "architecture comes from the checkpoint",
    "model.n_embd": "architecture comes from the checkpoint",
    "model.block_size": "architecture comes from the checkpoint",
    "model.bias": "architecture comes from the checkpoint",
    "model.tie_weights": "architecture comes from the checkpoint",
    "model.activation": "architecture comes from the checkpoint",
    "optimizer.name": "the optimizer state in the checkpoint is that optimizer's",
    "data.name": "the vocabulary and the data come from the checkpoint's run",
    "data.val_fraction": "it moves the train/val split the run was trained and evaluated on",
    "train.seed": "it changes which data every step trains on",
}
# Fields that never count as a change of the run (where it resumes from is the point of resuming).
IGNORED_FIELDS = {"resume"}
# Where this launch's processes meet: always this command line's, never a checkpoint's. torchrun's
# rendezvous store unpickles what it is sent, so a checkpoint copied from someone must not pick the address.
LOCAL_FIELDS = ("parallel.nnodes", "parallel.rdzv_endpoint", "parallel.rdzv_id")


def config_changes(saved: dict, current: dict) -> tuple[dict[str, list], list[str]]:
    """(allowed changes as {field: [saved, now]}, one refusal sentence per fixed field that differs)."""
    old, new = flatten(saved), flatten(current)
    changes, problems = {}, []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED_FIELDS or old.get(key) == new.get(key):
            continue
        if key in FIXED_FIELDS:
            problems.append(
                f"{key}={new.get(key)} conflicts with the checkpoint's {key}={old.get(key)} ({FIXED_FIELDS[key]}): "
                f"drop that override to resume, or start a new run in a new directory")
        else:
            changes[key] = [old.get(key), new.get(key)]
    problem = global_batch_problem(saved, current)
    return changes, problems + ([problem] if problem else [])


def global_batch_problem(saved: dict, current: dict) -> str | None:
    """A refusal when the sequences per step change: a step's global batch is the pure function of
    (seed, step) that the run trained on, and any layout that keeps its size sees the same sequences."""
    from omegaconf import OmegaConf

    from nanogpt_runner.config import Config, dp_degree

    def shape(cfg: dict) -> tuple[int, int, int]:
        full = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        return dp_degree(full.parallel), full.train.batch_size, full.train.grad_accum

    (old_dp, old_b, old_a), (dp, b, a) = shape(saved), shape(current)
    if old_dp * old_b * old_a == dp * b * a:
        return None
    return (f"the global batch would change from {old_dp * old_b * old_a} sequences per step "
            f"({old_dp} replicas x train.batch_size={old_b} x train.grad_accum={old_a}) to {dp * b * a} "
            f"({dp} x {b} x {a}): keep replicas x batch_size x grad_accum at {old_dp * old_b * old_a} "
            f"(e.g. halve batch_size when doubling the replicas), or start a new run in a new directory")


def override_paths(overrides: list[str], conf_dir: Path) -> list[str]:
    """The config paths a user's command-line overrides set: ``train.max_iters=9`` sets train.max_iters,
    ``model=small`` the whole model section, ``+experiment=x`` everything that preset sets.

    What the user typed wins over what a checkpoint or pretrained weights bring: a resume keeps these
    paths from the command line (the rest from the checkpoint's config), and ``model.init_from`` checks
    them against the weights' architecture (pretrained.apply_init_from)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    paths = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key in IGNORED_FIELDS:
            continue
        if key == "experiment":
            preset = OmegaConf.to_container(OmegaConf.load(conf_dir / "experiment" / f"{override.value()}.yaml"))
            for entry in preset.pop("defaults", []):
                if isinstance(entry, dict):
                    paths += [k.split()[-1].strip("/") for k in entry]
            paths += list(flatten(preset))
        else:
            paths.append(key)
    return paths


@dataclass
class ResumePlan:
    """What the launcher runs when it continues a run: ``cfg`` (the checkpoint's config with the user's
    allowed overrides applied; its ``resume`` names the checkpoint) in ``run_dir``."""

    run_dir: Path
    checkpoint: Path
    step: int
    cfg: object
    changes: dict[str, list] = field(default_factory=dict)

    def run_record(self) -> dict:
        """run.json fields for the resumed run: its identity stays, the config is now the effective one."""
        from omegaconf import OmegaConf

        previous = (read_run(self.run_dir) or {}).get("resumes", [])
        entry = {"time": time.time(), "step": self.step, "checkpoint": str(self.checkpoint), "changes": self.changes}
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "resumes": [*previous, entry]}


def plan_resume(cfg: Config, run_dir: Path, overrides: list[str], conf_dir: Path,
                announce: Callable[[str], None] = print) -> ResumePlan | None:
    """Decide whether this launch continues a run, and with which config; None for a fresh run.

    ``resume=PATH`` continues the run that PATH (a run directory or a checkpoint folder) belongs to, in
    place. Otherwise ``train.resume=auto`` continues ``run_dir`` when it already has checkpoints (the user
    passed hydra.run.dir=THAT_DIR). The config is the checkpoint's; only the fields the command line names,
    and LOCAL_FIELDS, are taken from ``cfg``; a change to a FIXED_FIELDS entry is refused with CheckpointError."""
    from omegaconf import OmegaConf

    from nanogpt_runner.config import Config

    run_dir = Path(run_dir)
    if cfg.resume:
        checkpoint, meta = resolve(Path(cfg.resume), "latest", announce)
        in_run = checkpoint.parent.name == CHECKPOINT_DIR
        target_dir = checkpoint.parent.parent if in_run else run_dir
    else:
        found = find_latest(checkpoint_dir(run_dir), announce)
        if found is None:
            return None
        if cfg.train.resume == "never":
            raise CheckpointError(
                f"{run_dir} already has checkpoints and train.resume=never: use a new hydra.run.dir for a new run, "
                f"or train.resume=auto to continue this one")
        (checkpoint, meta), target_dir = found, run_dir

    composed = OmegaConf.to_container(cfg, resolve=True)
    effective = OmegaConf.merge(OmegaConf.structured(Config), meta["config"])
    for path in [*LOCAL_FIELDS, *override_paths(overrides, conf_dir)]:
        patch = OmegaConf.create()
        OmegaConf.update(patch, path, OmegaConf.select(OmegaConf.create(composed), path, default=None))
        effective = OmegaConf.merge(effective, patch)
    changes, problems = config_changes(meta["config"], OmegaConf.to_container(effective, resolve=True))
    if problems:
        raise CheckpointError(f"cannot resume from {checkpoint}: " + "; ".join(problems))
    if meta["step"] >= effective.train.max_iters:
        raise CheckpointError(
            f"nothing to train: {checkpoint} is at step {meta['step']} and "
            f"train.max_iters={effective.train.max_iters}; raise train.max_iters to continue the run")
    effective.resume = str(checkpoint.resolve())
    return ResumePlan(target_dir.resolve(), checkpoint.resolve(), meta["step"], effective, changes)


class Checkpointer:
    """When to save and what to keep, for the training loop.

    Saves after step ``s`` when ``s`` is a multiple of ``train.ckpt_interval``, at the last step, when an
    evaluation sets a new best val loss (so the best model is always on disk), and on request (a signal).
    After each save it keeps the newest ``train.keep_last`` plus the best-by-val checkpoint. Every save
    is logged as a ``checkpoint`` event; a restore as a ``resume`` event. ``before_save`` runs on every
    rank before each save and may refuse it by raising (the loop's non-finite check: a checkpoint is only
    written once the updates in it are known to be finite)."""

    def __init__(self, run_dir: Path, cfg: Config, vocab, model, optimizer, scaler, writer,
                 say: Callable[[str], None] = print, before_save: Callable[[], None] = lambda: None):
        from omegaconf import OmegaConf

        self.run_dir, self.dir = Path(run_dir), checkpoint_dir(run_dir)
        # The data tokenizer's description: characters as a list (JSON has no tuples), a BPE as a dict.
        self.vocab = list(vocab) if isinstance(vocab, (list, tuple)) else vocab
        self.cfg, self.writer, self.say, self.before_save = cfg, writer, say, before_save
        # read at every step: copied out of the config once (a DictConfig read costs ~25 us)
        self.interval, self.only_on_improvement = cfg.train.ckpt_interval, cfg.train.ckpt_only_on_improvement
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.rank = rank_world()[0]
        self.last_saved_step = -1
        self.best_saved = math.inf

    def source(self) -> tuple[Path, dict] | None:
        """The checkpoint this attempt continues from, and its meta; None for a fresh start.

        A group that torchrun restarted (parallel.max_restarts) continues from this run directory's
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
        self.last_saved_step, self.best_saved = state.step, state.best_val_loss
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
        """Save now (``reason`` is recorded in the event); None when this step is already saved or is 0."""
        if state.step == self.last_saved_step or state.step == 0:
            return None
        self.before_save()
        start = time.perf_counter()
        try:
            path = save_checkpoint(self.dir, state, self.model, self.optimizer, config=self.config,
                                   vocab=self.vocab, scaler=self.scaler, val_loss=val_loss)
        except OSError:
            if rank_world()[1] == 1:  # (in a group another rank may still be writing: the next save cleans up)
                remove_temporaries(self.dir)  # a full disk: give back what the failed save took
            raise
        self.last_saved_step = state.step
        if val_loss is not None:
            self.best_saved = min(self.best_saved, val_loss)
        if self.rank == 0:
            removed = prune(self.dir, self.cfg.train.keep_last)
            seconds = time.perf_counter() - start
            self.writer.event("checkpoint", step=state.step, path=str(path.relative_to(self.run_dir)), reason=reason,
                              val_loss=val_loss, seconds=round(seconds, 3), removed=removed)
            self.say(f"checkpoint {path.name} saved ({reason}, {seconds:.2f} s)")
        return path
