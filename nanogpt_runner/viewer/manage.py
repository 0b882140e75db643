"""Tag, note, archive and delete runs from the page.

Every request names a run by the id the store found under the runs root, never by a path the page sent:
``RunStore.get`` is the only way from an id to a folder. Deleting is for finished runs only (not running,
queued, or holding the lock a live nanogpt-run keeps on RUN_DIR/.lock), of a real folder under the root
(no symlink anywhere on the way), and the page first shows the run's name and size to confirm. Sizing and
deleting go through directory file descriptors from the root (fsutil.size_under, fsutil.remove_under), so a
parent swapped for a symlink between the check and the delete cannot redirect it.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from nanogpt_runner.fsutil import UnsafeFolder, remove_under, size_under
from nanogpt_runner.runs import annotations
from nanogpt_runner.runs.annotations import AnnotationError, Annotations
from nanogpt_runner.runs.rundir import LOCK_FILE
from nanogpt_runner.viewer.store import RunStore

LIVE = ("running", "queued")


class ManageError(AnnotationError):
    """A request the page may not make, in words the page shows."""


def _folder(store: RunStore, run_id) -> Path:
    entry = store.get(run_id)
    if entry is None:
        raise ManageError("Pick a run from the list first.")
    return entry.record.path


def current(store: RunStore, run_id) -> Annotations:
    entry = store.get(run_id)
    if entry is None:
        raise ManageError("Pick a run from the list first.")
    return annotations.read(entry.record.path, entry.record.info)


def save(store: RunStore, run_id, tags_text, notes_text) -> Annotations:
    """Store the run's tags and note (checked first); returns what was stored."""
    folder = _folder(store, run_id)
    updated = current(store, run_id)
    updated.tags, updated.notes = annotations.parse_tags(tags_text), annotations.check_notes(notes_text)
    annotations.write(folder, updated)
    return updated


def set_archived(store: RunStore, run_id, archived: bool) -> Annotations:
    folder = _folder(store, run_id)
    updated = current(store, run_id)
    updated.archived = bool(archived)
    annotations.write(folder, updated)
    return updated


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def deletable(store: RunStore, run_id) -> tuple[Path, str]:
    """(the run's folder, the confirmation text naming the run and its size); ManageError when it may not go."""
    entry = store.get(run_id)
    if entry is None:
        raise ManageError("Pick a run from the list first.")
    folder, name = entry.record.path, entry.record.name
    if entry.record.status in LIVE or _locked(folder):
        raise ManageError(f"{name} is still running: stop it first (only finished runs can be deleted).")
    root = store.root
    if not _plain_folder_under(folder, root):
        raise ManageError(f"{name} is not a plain folder under the runs root; delete it by hand if you mean to.")
    if not os.access(folder.parent, os.W_OK) or not os.access(folder, os.W_OK):
        raise ManageError(f"The runs folder is read-only here: {name} cannot be deleted from the viewer.")
    try:
        size = size_under(root, folder.relative_to(root))
    except (OSError, ValueError) as err:  # a level swapped for a symlink since the check above
        raise ManageError(f"{name} is not a plain folder under the runs root; delete it by hand if you mean "
                          f"to.") from err
    return folder, f"Delete run {name} (folder {run_id}, {human_size(size)})? This cannot be undone."


def delete(store: RunStore, run_id) -> str:
    """Remove a finished run's folder; returns what was done."""
    folder, _ = deletable(store, run_id)
    name = store.get(run_id).record.name
    try:  # through directory descriptors from the root: a parent swapped for a symlink meanwhile fails, never follows
        remove_under(store.root, folder.relative_to(store.root))
    except (OSError, UnsafeFolder) as err:
        raise ManageError(f"{name} could not be deleted completely ({getattr(err, 'strerror', None) or err}).") from err
    store.poll(everything=True)
    return f"Deleted {name} ({run_id})."


def _plain_folder_under(folder: Path, root: Path) -> bool:
    """True when every step from ``root`` down to ``folder`` is a real directory, not a link."""
    try:
        relative = folder.relative_to(root)
    except ValueError:
        return False
    if not relative.parts:
        return False
    path = root
    for part in relative.parts:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def _locked(folder: Path) -> bool:
    """True when a live process holds the run directory's lock (launch.run_dir_lock)."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
