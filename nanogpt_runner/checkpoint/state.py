"""Saving and loading the training state inside a checkpoint folder, full or sharded, on every rank.

The folder itself (names, meta.json and its manifest, latest/best, finding, pruning) is checkpoint_folder.py's;
this module writes and reads what goes into one: the model and optimizer state dicts, the grad-scaler
state, each rank's RNG states.

- State dicts come from ``torch.distributed.checkpoint.state_dict``: the keys are the plain parameter
  names whatever wraps the model (torch.compile, DDP, FSDP, activation checkpointing), so a checkpoint
  saved by one layout loads into another. A full layout is one file per part (rank 0 writes it); a sharded
  layout is DCP's folder, which also loads into a single process without a process group.
- Tensors are read with ``torch.load(weights_only=True)``, DCP folders through dcp_read (their pickled
  metadata by an allowlist, their other entries weights-only), and the rest is JSON: a checkpoint cannot
  run code.

Public API (save/load are to be called on every rank): ``save_checkpoint``, ``start_checkpoint`` (its
``PendingSave.finish`` publishes the folder; a sharded state may be written in the background meanwhile),
``load_checkpoint``,
``load_model_state`` (the model alone, for sampling and export), ``TrainState``, ``rank_world``. When to
save and which checkpoint a run continues from is resume.py's business.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt_runner.checkpoint.folder import (
    FORMAT,
    LATEST,
    META_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    VERSION,
    checkpoint_name,
    manifest,
    read_meta,
    remove_folder,
)
from nanogpt_runner.checkpoint.rng import rng_state, set_rng_state
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.fsutil import TMP_PREFIX, fsync_dir, write_atomic
from nanogpt_runner.model.optimizers import Optimizers
from nanogpt_runner.safe_pickle import UnsafePickleError, weights_only_refusal


@dataclass
class TrainState:
    """Where training is: ``step`` optimizer updates done, ``tokens`` trained on, the lowest val loss so
    far, and how many updates ``nan_policy=skip_step`` threw away."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0


# ----------------------------------------------------------------------------------------- distributed

def rank_world() -> tuple[int, int]:
    """(this process's rank, the group's size); (0, 1) without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _dcp_quietly():
    """DCP warns that it assumes one process when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _save_tensors(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _torch_load(path: Path):
    """``torch.load`` that only builds tensors and plain containers: a file holding anything else (code to
    run on unpickling) is refused with CheckpointError instead of being executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain data; refusing to load it "
                              f"({weights_only_refusal(err)})") from err


# ------------------------------------------------------------------------------------------ save/load

def save_checkpoint(
    ckpt_dir: Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer],
    *,
    config: dict,
    vocab: list | tuple | dict,  # the data tokenizer's description (nanogpt_runner.data.tokenizers): how to decode
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
    sharded: bool | None = None,
) -> Path:
    """Write checkpoint ``step_{state.step}`` atomically and point ``latest`` at it; returns its folder.

    Call it on every rank: the state-dict gathers are collective. ``sharded`` (default: when a process
    group of more than one rank exists) writes each rank's shards through torch.distributed.checkpoint;
    otherwise rank 0 writes full state dicts. Each rank always writes its own RNG states. ``optimizer`` may
    be several (optim.Optimizers): their states are merged into one dict keyed by parameter name.
    """
    return start_checkpoint(ckpt_dir, state, model, optimizer, config=config, vocab=vocab, scaler=scaler,
                            val_loss=val_loss, sharded=sharded).finish()


@dataclass
class PendingSave:
    """A checkpoint written into its temporary folder (or, sharded and in the background, being written there):
    ``finish`` waits for the write, then publishes the folder (meta.json with the manifest, the rename, ``latest``).
    Until then nothing points at it, so a run that ends before ``finish`` leaves only a temporary folder."""

    step: int
    tmp: Path
    final: Path
    meta: dict  # meta.json less the manifest (on rank 0; empty elsewhere)
    future: Future | None = None  # DCP's background write (async_save); None: written already

    def finish(self) -> Path:
        """Collective (every rank): wait for the write, then rank 0 publishes; the published folder."""
        rank, world = rank_world()
        try:
            if self.future is not None:
                self.future.result()
            _barrier()
            files = manifest(self.tmp, rank, world)
            if rank == 0:
                _publish(self.tmp, self.final, {**self.meta, "files": files})
        except BaseException:
            # Any failure (a full disk, a failed gather, an interrupt): the partial folder goes, and its space with
            # it. Whichever rank fails removes it; the others' writes into it then fail too, as the save has.
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        _barrier()
        return self.final


def start_checkpoint(
    ckpt_dir: Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer],
    *,
    config: dict,
    vocab: list | tuple | dict,
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
    sharded: bool | None = None,
    background_group=None,
) -> PendingSave:
    """``save_checkpoint`` up to its publication. With ``background_group`` (a process group of its own, for DCP's
    collectives off the training thread) a sharded state is copied to CPU memory here and written by
    ``dcp.async_save`` in a background thread: the model may train on as soon as this returns."""
    rank, world = rank_world()
    sharded = world > 1 if sharded is None else sharded
    ckpt_dir = Path(ckpt_dir)
    name = checkpoint_name(state.step)
    tmp, final = ckpt_dir / f"{TMP_PREFIX}{name}", ckpt_dir / name
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    try:
        future = _write_state(tmp, model, optimizer, sharded, rank, background_group if sharded else None)
        meta = {
            "format": FORMAT, "version": VERSION, "step": state.step, "tokens": state.tokens, "val_loss": val_loss,
            "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
            "skipped_steps": state.skipped_steps, "scaler": scaler.state_dict() if scaler is not None else {},
            "layout": "sharded" if sharded else "full", "world_size": world, "time": time.time(),
            "torch": torch.__version__, "config": config, "vocab": vocab,
        } if rank == 0 else {}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PendingSave(state.step, tmp, final, meta, future)


def _write_state(tmp: Path, model, optimizer, sharded: bool, rank: int, background_group) -> Future | None:
    """Write the model and optimizer states (sharded: every rank its shards; else rank 0 the full dicts) and each
    rank's RNG states into ``tmp``; with ``background_group`` the sharded states through ``dcp.async_save``, whose
    future is returned (None: all written)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _save_tensors(rng_state(), tmp / f"rng-rank{rank}.pt")
    options = StateDictOptions(full_state_dict=not sharded, cpu_offload=not sharded)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = _optimizer_state(model, optimizer, options)
    if sharded:
        import torch.distributed.checkpoint as dcp

        states = {"model": model_sd, "optimizer": optim_sd}
        with _dcp_quietly():
            if background_group is not None:  # staged to CPU memory before it returns, written in a thread
                return dcp.async_save(states, checkpoint_id=tmp, process_group=background_group)
            dcp.save(states, checkpoint_id=tmp)
    elif rank == 0:
        _save_tensors(model_sd, tmp / MODEL_FILE)
        _save_tensors(optim_sd, tmp / OPTIMIZER_FILE)
    return None


def _optimizer_state(model, optimizer, options=None) -> dict:
    """The optimizer's state dict as every layout saves it: one param group per kind of parameter, whichever
    optimizers this layout splits them between (Optimizers.layout_free), so any layout resumes any other's."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.layout_free(state) if isinstance(optimizer, Optimizers) else state


def _publish(tmp: Path, final: Path, meta: dict) -> None:
    """meta.json written last into ``tmp``, the folder renamed to ``final``, then ``latest`` pointed at it."""
    with open(tmp / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    remove_folder(final)  # the same step saved again (a run resumed from an earlier checkpoint)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    write_atomic(final.parent / LATEST, final.name + "\n")


@contextlib.contextmanager
def _refused_if_unsafe(path: Path):
    """Turn dcp_read's refusal of a crafted DCP folder into the CheckpointError a user sees."""
    try:
        yield
    except UnsafePickleError as err:
        raise CheckpointError(f"{path} holds data that torch.distributed.checkpoint never writes; refusing to load "
                              f"it ({err})") from err


def _load_sharded(state: dict, path: Path) -> None:
    """Fill ``state`` in place from the DCP folder ``path``, through dcp_read (no code from the folder runs)."""
    from nanogpt_runner.checkpoint import dcp_read

    with _refused_if_unsafe(path), _dcp_quietly():
        dcp_read.load(state, path)


def load_model_state(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The model's state dict (clean keys, CPU tensors) from either layout, without a process group."""
    path = Path(path)
    if meta["layout"] == "full":
        return _torch_load(path / MODEL_FILE)
    from nanogpt_runner.checkpoint import dcp_read

    with _refused_if_unsafe(path):
        state = {"model": dcp_read.empty_tensors(path, "model.")}
    _load_sharded(state, path)
    return state["model"]


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    meta: dict | None = None,
    restore_rng: bool = True,
) -> TrainState:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``scaler``, this rank's RNG) in place.

    Works across layouts: a full checkpoint is handed to ``set_*_state_dict`` (which shards it as the
    model is sharded, rank 0's copy broadcast when a process group exists); a sharded one is read with
    DCP into the state dicts this process's model and optimizer expect. Call on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    meta = meta or read_meta(path)
    rank, world = rank_world()
    if meta["layout"] == "full":
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=world > 1)
        load = rank == 0 or world == 1
        model_sd = _torch_load(path / MODEL_FILE) if load else {}
        set_model_state_dict(model, model_sd, options=options)
        if optimizer is not None:
            optim_sd = _torch_load(path / OPTIMIZER_FILE) if load else {}
            set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    else:
        state = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optimizer"] = _optimizer_state(model, optimizer)
        _load_sharded(state, path)
        set_model_state_dict(model, state["model"])
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        rng_file = path / f"rng-rank{rank}.pt"
        if not rng_file.exists():  # saved with fewer ranks: the others start from rank 0's states
            rng_file = path / "rng-rank0.pt"
        set_rng_state(_torch_load(rng_file))
    best = meta.get("best_val_loss")
    return TrainState(step=meta["step"], tokens=meta["tokens"], best_val_loss=math.inf if best is None else best,
                      skipped_steps=meta.get("skipped_steps", 0))


def load_optimizer_state(path: Path, meta: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter state ({parameter name: {"step", "exp_avg", ...}}, CPU tensors) from
    either layout, without a model or a process group: what an export into another trainer's format needs."""
    path = Path(path)
    if meta["layout"] == "full":
        return dict(_torch_load(path / OPTIMIZER_FILE)["state"])
    from nanogpt_runner.checkpoint import dcp_read

    with _refused_if_unsafe(path):
        flat = dcp_read.empty_tensors(path, "optimizer.state.")
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        name, field = key.rsplit(".", 1)
        nested.setdefault(name, {})[field] = tensor
    _load_sharded({"optimizer": {"state": nested}}, path)
    return nested
