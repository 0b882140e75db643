"""The checkpoint folder format: names, meta.json and its manifest, finding, pruning and discarding folders.

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

Public API: ``read_meta`` (a folder's meta, every file checked against its manifest), ``list_checkpoints``,
``find_latest``, ``find_best``, ``resolve`` (a checkpoint from what a user typed), ``prune``, ``mark_latest``,
``remove_temporaries``, ``discard_after``, and for checkpoint.py (which writes and reads the state inside a
folder) ``manifest`` and ``remove_folder``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from nanogpt_runner.config.saved import interpolation_problem
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.fsutil import TMP_PREFIX, open_regular, write_atomic
from nanogpt_runner.runs.rundir import CHECKPOINT_DIR

FORMAT = "nanogpt-runner-checkpoint"
VERSION = 1
META_FILE = "meta.json"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
LATEST = "latest"
BEST = "best"
NAME_RE = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path, rank: int = 0, world: int = 1) -> dict[str, dict]:
    """Size and sha256 of every file in ``folder`` but meta.json, on rank 0 (empty on the others).

    Each rank hashes the files it wrote (its RNG state and its DCP shards ``__{rank}_*.distcp``; rank 0 also
    the rest) and rank 0 gathers the parts: a large sharded save is hashed in parallel, and no rank waits in a
    collective past its timeout while rank 0 alone hashes every shard."""
    def writer(name: str) -> int:
        match = re.fullmatch(r"rng-rank(\d+)\.pt|__(\d+)_\d+\.distcp", name)
        return int(match.group(1) or match.group(2)) if match else 0

    mine = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != META_FILE and writer(p.name) == rank}
    if world == 1:
        return mine
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    return dict(sorted(item for part in parts or [] for item in part.items()))


def remove_folder(path: Path) -> None:
    """Delete a checkpoint folder: renamed out of the way first, so no reader sees it half-deleted."""
    if not path.exists():
        return
    doomed = path.with_name(f"{TMP_PREFIX}deleted-{path.name}.{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def read_meta(path: Path, verify: bool = True) -> dict:
    """A checkpoint folder's meta.json, after checking every file against its manifest.

    Raises CheckpointError naming the damage: missing folder or file, wrong size (truncated), wrong
    hash (corrupted), unreadable meta (the folder is not a checkpoint or was cut short), a saved config
    holding an interpolation (``${...}``: saved configs are data, never resolved)."""
    path = Path(path)
    meta_file = open_regular(path / META_FILE)  # a FIFO or a link out of the folder would be read as if ours
    if meta_file is None:
        raise CheckpointError(f"{path} is not a checkpoint: it has no {META_FILE} (a regular file)")
    try:
        with meta_file:
            meta = json.loads(meta_file.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: {META_FILE} is unreadable ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nanogpt-runner checkpoint ({META_FILE} has no format {FORMAT!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta['version']}, newer than this "
                              f"nanogpt-runner reads ({VERSION}): upgrade nanogpt-runner")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} is damaged: its {META_FILE} holds no config")
    if problem := interpolation_problem(meta["config"], f"checkpoint {path}'s {META_FILE}"):
        raise CheckpointError(problem)
    files = meta.get("files")
    if verify and not (isinstance(files, dict) and all(isinstance(n, str) and n == Path(n).name and
                                                        isinstance(e, dict) for n, e in files.items())):
        raise CheckpointError(f"checkpoint {path} is damaged: its {META_FILE} lists files outside its folder")
    if verify:
        for name, expected in files.items():
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
    if not target.is_dir():
        what = "is a file" if target.exists() else "does not exist"
        raise CheckpointError(f"{target} {what}: pass a run directory or a checkpoint folder "
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
        remove_folder(Path(ckpt_dir) / name)
    if best_path is not None and _pointer(ckpt_dir, BEST) != best_path:
        write_atomic(Path(ckpt_dir) / BEST, best_path.name + "\n")
    return removed


def mark_latest(path: Path) -> None:
    """Point its folder's ``latest`` at checkpoint ``path`` (a resume from an older one makes it the newest)."""
    write_atomic(Path(path).parent / LATEST, Path(path).name + "\n")


def remove_temporaries(ckpt_dir: Path) -> None:
    """Delete what interrupted saves left (``.tmp-*`` folders and files): on a full disk, the space."""
    for stale in Path(ckpt_dir).glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def discard_after(ckpt_dir: Path, step: int) -> list[str]:
    """Delete checkpoints newer than ``step``: they belong to the attempt that a resume from ``step``
    replaces (and stale temporary folders of a crashed save). Returns the names deleted."""
    removed = []
    for path in list_checkpoints(ckpt_dir):
        if int(NAME_RE.match(path.name).group(1)) > step:
            remove_folder(path)
            removed.append(path.name)
    remove_temporaries(ckpt_dir)
    for pointer in (LATEST, BEST):
        target = _pointer(ckpt_dir, pointer)
        if target is not None and not target.exists():
            (Path(ckpt_dir) / pointer).unlink(missing_ok=True)
    return removed
