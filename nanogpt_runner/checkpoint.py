"""Checkpoints, resume, and the two ways a run stops early: a signal, or a loss that is not finite.

One run's checkpoints (every checkpoint is a folder, so a sharded save has the same shape as a plain one)::

    checkpoints/
      step_0000500/
        meta.json           format and version, step, tokens, val loss at that step, best val loss,
                            skipped steps, grad-scaler state, resolved config, vocabulary, layout,
                            and the size and sha256 of every other file in the folder
        model.pt            layout "full": the whole model state dict, clean parameter names
        optimizer.pt        layout "full": the whole optimizer state dict, keyed by parameter name
        .metadata *.distcp  layout "sharded": model and optimizer through torch.distributed.checkpoint
        rng-rank0.pt        each rank's RNG states (torch CPU and CUDA, numpy, python)
      latest                name of the newest complete checkpoint
      best                  name of the checkpoint with the lowest val loss

Why it is shaped this way:
- Writes are atomic: everything goes into ``.tmp-step_...``, each file fsynced, then meta.json (with the
  sizes and hashes) is written last, the folder renamed into place, and only then the ``latest`` pointer
  replaced. A crash at any instant leaves the previous checkpoint complete and pointed to.
- Every load checks the manifest first, so a truncated or corrupted file is named in a clear message and
  the previous good checkpoint is used instead of a half-trained surprise or a pickle traceback.
- Tensors are read with ``torch.load(weights_only=True)`` and the rest is JSON: a checkpoint cannot run code.
- State dicts come from ``torch.distributed.checkpoint.state_dict``: the keys are the plain parameter
  names whatever wraps the model (torch.compile, DDP, FSDP, activation checkpointing), so a checkpoint
  saved by one layout loads into another. A full layout is one file per part (rank 0 writes it); a sharded
  layout is DCP's folder, which also loads into a single process without a process group.

Public API for the training loop (all save/load functions are to be called on every rank):
``save_checkpoint``, ``load_checkpoint``, ``find_latest``, ``resolve``, ``Checkpointer`` (the policy:
when to save, what to keep), ``plan_resume`` (the launcher's decision), ``StopSignals``, ``NonFiniteGuard``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanogpt_runner.runs import CHECKPOINT_DIR, METRICS_FILE, read_run

FORMAT = "nanogpt-runner-checkpoint"
VERSION = 1
META_FILE = "meta.json"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
LATEST = "latest"
BEST = "best"
TMP_PREFIX = ".tmp-"
NAME_RE = re.compile(r"^step_(\d+)$")

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
    "data.name": "the vocabulary and the data come from the checkpoint's run",
    "data.val_fraction": "it moves the train/val split the run was trained and evaluated on",
    "train.seed": "it changes which data every step trains on",
}
# Fields that never count as a change of the run (where it resumes from is the point of resuming).
IGNORED_FIELDS = {"resume"}
CONFIG_GROUPS = ("model", "optimizer", "data", "parallel")


class RunStopped(Exception):
    """A run that ends before completing, for a reason the user can act on: recorded as ``status`` in
    run.json, reported in one line (the message), and the process exits with ``exit_code``."""

    status = "failed"
    exit_code = 1


class CheckpointError(RunStopped):
    """A checkpoint cannot be used (missing, damaged, or incompatible with the config): the message
    names the checkpoint, the problem and the fix."""

    exit_code = 2


class Interrupted(RunStopped):
    """SIGTERM or SIGINT arrived; the last completed step was checkpointed."""

    status = "interrupted"

    def __init__(self, signum: int, step: int, saved: Path | None):
        name = signal.Signals(signum).name
        where = f"checkpoint {saved}" if saved else "no new checkpoint (nothing trained since the last one)"
        super().__init__(f"stopped by {name} after step {step}; {where}; resume with train.resume=auto "
                         f"(same run dir) or resume=RUN_DIR")
        self.exit_code = 128 + signum
        self.step = step


class NonFiniteLoss(RunStopped):
    """The loss or the gradient norm became NaN or infinite under ``train.nan_policy=stop``."""


@dataclass
class TrainState:
    """Where training is: ``step`` optimizer updates done, ``tokens`` trained on, the lowest val loss so
    far, and how many updates ``nan_policy=skip_step`` threw away."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


# ----------------------------------------------------------------------------------------- distributed

def _rank_world() -> tuple[int, int]:
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


# ------------------------------------------------------------------------------------ files and bytes

def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself lives in the folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    """Atomically replace ``path``: temp name, fsync, rename, fsync the folder."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _torch_load(path: Path):
    """``torch.load`` that only builds tensors and plain containers: a file holding anything else (code to
    run on unpickling) is refused with CheckpointError instead of being executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain data; refusing to load it "
                              f"({str(err).splitlines()[0]})") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict]:
    return {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != META_FILE}


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: renamed out of the way first, so no reader sees it half-deleted."""
    if not path.exists():
        return
    doomed = path.with_name(f"{TMP_PREFIX}deleted-{path.name}.{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- RNG

def rng_state() -> dict:
    """Every RNG a training step may draw from, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))


# ------------------------------------------------------------------------------------------ save/load

def save_checkpoint(
    ckpt_dir: Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    config: dict,
    vocab: list[str] | tuple[str, ...],
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
    sharded: bool | None = None,
) -> Path:
    """Write checkpoint ``step_{state.step}`` atomically and point ``latest`` at it; returns its folder.

    Call it on every rank: the state-dict gathers are collective. ``sharded`` (default: when a process
    group of more than one rank exists) writes each rank's shards through torch.distributed.checkpoint;
    otherwise rank 0 writes full state dicts. Each rank always writes its own RNG states.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    rank, world = _rank_world()
    sharded = world > 1 if sharded is None else sharded
    ckpt_dir = Path(ckpt_dir)
    name = checkpoint_name(state.step)
    tmp, final = ckpt_dir / f"{TMP_PREFIX}{name}", ckpt_dir / name
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()

    options = StateDictOptions(full_state_dict=not sharded, cpu_offload=not sharded)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    if sharded:
        import torch.distributed.checkpoint as dcp

        with _dcp_quietly():
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    elif rank == 0:
        _save_tensors(model_sd, tmp / MODEL_FILE)
        _save_tensors(optim_sd, tmp / OPTIMIZER_FILE)
    _save_tensors(rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier()

    if rank == 0:
        meta = {
            "format": FORMAT, "version": VERSION, "step": state.step, "tokens": state.tokens,
            "val_loss": val_loss, "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
            "skipped_steps": state.skipped_steps, "scaler": scaler.state_dict() if scaler is not None else {},
            "layout": "sharded" if sharded else "full", "world_size": world, "time": time.time(),
            "torch": torch.__version__, "config": config, "vocab": list(vocab), "files": _manifest(tmp),
        }
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _remove(final)  # the same step saved again (a run resumed from an earlier checkpoint)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        _write_text(ckpt_dir / LATEST, name + "\n")
    _barrier()
    return final


def read_meta(path: Path, verify: bool = True) -> dict:
    """A checkpoint folder's meta.json, after checking every file against its manifest.

    Raises CheckpointError naming the damage: missing folder or file, wrong size (truncated), wrong
    hash (corrupted), unreadable meta (the folder is not a checkpoint or was cut short)."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is not a checkpoint: it has no {META_FILE}") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: {META_FILE} is unreadable ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nanogpt-runner checkpoint ({META_FILE} has no format {FORMAT!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta['version']}, newer than this "
                              f"nanogpt-runner reads ({VERSION}): upgrade nanogpt-runner")
    if verify:
        for name, expected in meta["files"].items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is damaged: {name} is missing")
            size = file.stat().st_size
            if size != expected["size"]:
                raise CheckpointError(f"checkpoint {path} is damaged: {name} has {size} bytes, "
                                      f"{expected['size']} were written (truncated?)")
            if _sha256(file) != expected["sha256"]:
                raise CheckpointError(f"checkpoint {path} is damaged: {name} does not match its sha256 (corrupted)")
    return meta


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporary and deleted ones are skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _pointer(ckpt_dir: Path, name: str) -> Path | None:
    try:
        target = (Path(ckpt_dir) / name).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(ckpt_dir) / target if NAME_RE.match(target) else None


def find_latest(ckpt_dir: Path, announce: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The newest checkpoint that passes its checks, and its meta; None when there is none.

    The ``latest`` pointer is tried first; then every checkpoint folder from the newest down. Each
    damaged one is announced (why, and that an older one is used) and skipped."""
    pointed = _pointer(ckpt_dir, LATEST)
    candidates = list(reversed(list_checkpoints(ckpt_dir)))
    if pointed is not None and pointed in candidates:
        candidates.remove(pointed)
        candidates.insert(0, pointed)
    for i, path in enumerate(candidates):
        try:
            return path, read_meta(path)
        except CheckpointError as err:
            rest = candidates[i + 1:]
            announce(f"WARNING: {err}; " + (f"falling back to {rest[0].name}" if rest else "no older checkpoint left"))
    return None


def find_best(ckpt_dir: Path, announce: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The checkpoint with the lowest val loss that passes its checks, else the latest good one."""
    scored = []
    for path in list_checkpoints(ckpt_dir):
        try:
            meta = read_meta(path, verify=False)
        except CheckpointError:
            continue
        if isinstance(meta.get("val_loss"), (int, float)) and math.isfinite(meta["val_loss"]):
            scored.append((meta["val_loss"], -meta["step"], path))
    for _, _, path in sorted(scored):
        try:
            return path, read_meta(path)
        except CheckpointError as err:
            announce(f"WARNING: {err}; trying the next best")
    return find_latest(ckpt_dir, announce)


def resolve(target: Path, which: str = "latest", announce: Callable[[str], None] = print) -> tuple[Path, dict]:
    """A checkpoint folder from what a user typed: a checkpoint folder, a run's checkpoints/ folder, or a
    run directory (then its ``which`` checkpoint: latest or best). Raises CheckpointError when none is usable."""
    target = Path(target).expanduser()
    if not target.exists():
        raise CheckpointError(f"{target} does not exist: pass a run directory or a checkpoint folder "
                              f"(RUN_DIR/{CHECKPOINT_DIR}/step_...)")
    if (target / META_FILE).exists():
        return target, read_meta(target)
    ckpt_dir = target if (target / LATEST).exists() or list_checkpoints(target) else checkpoint_dir(target)
    found = (find_best if which == "best" else find_latest)(ckpt_dir, announce)
    if found is None:
        where = "its checkpoints are all damaged" if list_checkpoints(ckpt_dir) else "it has no checkpoint yet"
        raise CheckpointError(f"cannot use {target}: {where} (looked in {ckpt_dir}); a run saves one every "
                              f"train.ckpt_interval steps, at the end and when stopped by a signal")
    return found


def load_model_state(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The model's state dict (clean keys, CPU tensors) from either layout, without a process group."""
    path = Path(path)
    if meta["layout"] == "full":
        return _torch_load(path / MODEL_FILE)
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(path))
    keys = [k for k in reader.read_metadata().state_dict_metadata if k.startswith("model.")]
    shapes = reader.read_metadata().state_dict_metadata
    state = {"model": {k[len("model."):]: torch.empty(shapes[k].size, dtype=shapes[k].properties.dtype) for k in keys}}
    with _dcp_quietly():
        dcp.load(state, storage_reader=reader)
    return state["model"]


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
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
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    meta = meta or read_meta(path)
    rank, world = _rank_world()
    if meta["layout"] == "full":
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=world > 1)
        load = rank == 0 or world == 1
        model_sd = _torch_load(path / MODEL_FILE) if load else {}
        set_model_state_dict(model, model_sd, options=options)
        if optimizer is not None:
            optim_sd = _torch_load(path / OPTIMIZER_FILE) if load else {}
            set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    else:
        import torch.distributed.checkpoint as dcp

        state = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optimizer"] = get_optimizer_state_dict(model, optimizer)
        with _dcp_quietly():
            dcp.load(state, checkpoint_id=path)
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


def prune(ckpt_dir: Path, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` checkpoints and the best-by-val one; point ``best`` at it.
    Returns the names deleted. Rank 0 only."""
    checkpoints = list_checkpoints(ckpt_dir)
    best_path, best_loss = None, math.inf
    for path in checkpoints:
        try:
            loss = read_meta(path, verify=False).get("val_loss")
        except CheckpointError:
            continue
        if isinstance(loss, (int, float)) and loss <= best_loss:
            best_path, best_loss = path, loss
    keep = set(checkpoints[-keep_last:]) | ({best_path} if best_path else set())
    removed = [p.name for p in checkpoints if p not in keep]
    for name in removed:
        _remove(Path(ckpt_dir) / name)
    if best_path is not None and _pointer(ckpt_dir, BEST) != best_path:
        _write_text(Path(ckpt_dir) / BEST, best_path.name + "\n")
    return removed


def discard_after(ckpt_dir: Path, step: int) -> list[str]:
    """Delete checkpoints newer than ``step``: they belong to the attempt that a resume from ``step``
    replaces (and stale temporary folders of a crashed save). Returns the names deleted."""
    removed = []
    for path in list_checkpoints(ckpt_dir):
        if int(NAME_RE.match(path.name).group(1)) > step:
            _remove(path)
            removed.append(path.name)
    for stale in Path(ckpt_dir).glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for pointer in (LATEST, BEST):
        target = _pointer(ckpt_dir, pointer)
        if target is not None and not target.exists():
            (Path(ckpt_dir) / pointer).unlink(missing_ok=True)
    return removed


# ----------------------------------------------------------------------------------- config on resume

def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: configs compared field by field."""
    flat = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


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


def _override_paths(overrides: list[str], conf_dir: Path) -> list[str]:
    """The config paths a user's command-line overrides set: ``train.max_iters=9`` sets train.max_iters,
    ``model=small`` the whole model section, ``+experiment=x`` everything that preset sets."""
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


def plan_resume(cfg, run_dir: Path, overrides: list[str], conf_dir: Path,
                announce: Callable[[str], None] = print) -> ResumePlan | None:
    """Decide whether this launch continues a run, and with which config; None for a fresh run.

    ``resume=PATH`` continues the run that PATH (a run directory or a checkpoint folder) belongs to, in
    place. Otherwise ``train.resume=auto`` continues ``run_dir`` when it already has checkpoints (the user
    passed hydra.run.dir=THAT_DIR). The config is the checkpoint's; only the fields the command line names
    are taken from ``cfg``; a change to a FIXED_FIELDS entry is refused with CheckpointError."""
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
    for path in _override_paths(overrides, conf_dir):
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


# ----------------------------------------------------------------------------------- the save policy

class Checkpointer:
    """When to save and what to keep, for the training loop.

    Saves after step ``s`` when ``s`` is a multiple of ``train.ckpt_interval``, at the last step, when an
    evaluation sets a new best val loss (so the best model is always on disk), and on request (a signal).
    After each save it keeps the newest ``train.keep_last`` plus the best-by-val checkpoint. Every save
    is logged as a ``checkpoint`` event; a restore as a ``resume`` event."""

    def __init__(self, run_dir: Path, cfg, vocab, model, optimizer, scaler, writer,
                 say: Callable[[str], None] = print):
        from omegaconf import OmegaConf

        self.run_dir, self.dir = Path(run_dir), checkpoint_dir(run_dir)
        self.cfg, self.vocab, self.writer, self.say = cfg, tuple(vocab), writer, say
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.rank = _rank_world()[0]
        self.last_saved_step = -1
        self.best_saved = math.inf

    def restore(self) -> TrainState:
        """Load the checkpoint this run continues from (``resume`` or, with train.resume=auto, this run
        directory's latest); a fresh TrainState when there is none. Checkpoints newer than the one
        loaded are deleted: the resumed run replaces that part of the history."""
        cfg = self.cfg
        if cfg.resume:
            path, meta = resolve(Path(cfg.resume), "latest", self.say)
        elif cfg.train.resume == "auto" and (found := find_latest(self.dir, self.say)) is not None:
            path, meta = found
        else:
            metrics = self.run_dir / METRICS_FILE
            if self.rank == 0 and metrics.exists() and metrics.stat().st_size:
                self.writer.event("resume", step=0, checkpoint=None)  # an attempt that saved nothing: start over
            return TrainState()
        if tuple(meta["vocab"]) != self.vocab:
            raise CheckpointError(f"{path} was trained on a different vocabulary ({len(meta['vocab'])} symbols) than "
                                  f"this run's data ({len(self.vocab)}): resume with the data config it was saved with")
        changes, problems = config_changes(meta["config"], self.config)
        if problems:
            raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))
        state = load_checkpoint(path, self.model, self.optimizer, self.scaler, meta=meta)
        self.last_saved_step, self.best_saved = state.step, state.best_val_loss
        discarded = []
        if self.rank == 0 and path.parent.resolve() == self.dir.resolve():
            discarded = discard_after(self.dir, state.step)
            _write_text(self.dir / LATEST, path.name + "\n")
        if self.rank == 0:
            self.writer.event("resume", step=state.step, checkpoint=str(path), changes=changes, discarded=discarded)
        self.say(f"resumed from {path} at step {state.step}"
                 + (f"; changed: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}" if changes else "")
                 + (f"; discarded newer checkpoints {', '.join(discarded)}" if discarded else ""))
        return state

    def after_step(self, state: TrainState, val_loss: float | None = None, final: bool = False) -> Path | None:
        """Save if step ``state.step`` is due (interval, last step, or a new best val loss)."""
        interval = self.cfg.train.ckpt_interval
        best = val_loss is not None and val_loss < self.best_saved
        reason = "end" if final else "best" if best else "interval" if interval and state.step % interval == 0 else None
        if reason is None:
            return None
        return self.save(state, reason, val_loss)

    def save(self, state: TrainState, reason: str, val_loss: float | None = None) -> Path | None:
        """Save now (``reason`` is recorded in the event); None when this step is already saved or is 0."""
        if state.step == self.last_saved_step or state.step == 0:
            return None
        start = time.perf_counter()
        path = save_checkpoint(self.dir, state, self.model, self.optimizer, config=self.config, vocab=self.vocab,
                               scaler=self.scaler, val_loss=val_loss)
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


# ------------------------------------------------------------------------------------ stopping early

class StopSignals:
    """SIGTERM and SIGINT become a request that the loop polls at step boundaries, so the run can save
    the last completed step and stop cleanly. A second SIGINT stops at once (KeyboardInterrupt).

    ``agree`` turns this process's flag into the group's decision (e.g. an all-reduce of the flag, so
    every rank stops at the same step); without it the flag is local."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, agree: Callable[[bool], bool] | None = None):
        self.received: int | None = None
        self._agree = agree
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> bool:
        """Poll at a step boundary: True when the run should save and stop now."""
        flag = self.received is not None
        return self._agree(flag) if self._agree is not None else flag

    @property
    def signum(self) -> int:
        return self.received if self.received is not None else signal.SIGTERM


class NonFiniteGuard:
    """Checks each update's loss and gradient norm before the optimizer applies it.

    ``policy="stop"`` raises NonFiniteLoss (nothing is saved: the last checkpoint is the last good
    state); ``"skip_step"`` drops the update and counts it. Either way a ``nan`` event names the step and
    values. With fp16 loss scaling an infinite gradient norm is the scaler's business (it skips the step
    and lowers the scale), so only the loss is checked then."""

    def __init__(self, policy: str, writer, scaler_enabled: bool = False, skipped: int = 0):
        self.policy, self.writer, self.scaler_enabled, self.skipped = policy, writer, scaler_enabled, skipped
        self._window_skipped = 0

    def window_mean(self, loss_sum: float, window_steps: int) -> float:
        """Mean loss of a log window over the updates that were applied (skipped ones add nothing to the
        sum); NaN when every update in it was skipped. Starts the next window."""
        applied, self._window_skipped = window_steps - self._window_skipped, 0
        return loss_sum / applied if applied > 0 else math.nan

    def skip(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """True when this update must not be applied; raises under policy ``stop``."""
        values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        finite = torch.isfinite(values).tolist()
        if finite[0] and (finite[1] or self.scaler_enabled):
            return False
        loss_value, norm_value = values.tolist()
        action = "stopped" if self.policy == "stop" else "skipped"
        if self.writer is not None:
            self.writer.event("nan", step=step, loss=loss_value, grad_norm=norm_value, action=action)
        if self.policy == "stop":
            raise NonFiniteLoss(
                f"non-finite {'loss' if not finite[0] else 'gradient norm'} at step {step} (loss {loss_value}, "
                f"grad norm {norm_value}); the last checkpoint holds the last good state. Lower optimizer.lr, use "
                f"train.precision=bf16 or fp32, or set train.nan_policy=skip_step to skip such updates")
        self.skipped += 1
        self._window_skipped += 1
        return True
