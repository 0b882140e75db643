"""The one rule for files in a run folder, held in code: a run folder is data, never instructions.

A runs folder may come from someone else (a copied run, a shared disk, a download), so every reader and
writer of run folders goes through this module:

- a file in a run folder is opened with ``O_NOFOLLOW`` and used only when it is a regular file
  (``open_regular`` to read, ``open_nofollow`` to append or update): a symlink, a FIFO or a device named
  like a run's file is never followed, blocked on or written through;
- a folder about to be written by a resume holds no symlink anywhere (``refuse_symlinks``);
- a file is replaced through a temporary made with ``O_CREAT|O_EXCL|O_NOFOLLOW`` beside it, then renamed
  (``write_atomic``), so a reader, a crash or a full disk sees the old file or the new one, never half of
  either, a planted temporary cannot redirect the write, and a failed write (any exception) leaves no
  temporary behind;
- a folder is deleted through directory file descriptors (``remove_under``): each level opened with
  ``O_NOFOLLOW`` from the root, the folder renamed into a trash folder under the root, then removed there,
  so swapping a parent for a symlink mid-way cannot make it delete anything outside.

Saved configs are never interpolated (nanogpt_runner.config.saved holds that half). This module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

# Temporary names start with this; folders that hold them (checkpoints/) skip and clean up such names.
TMP_PREFIX = ".tmp-"
# Where remove_under puts a folder just before removing it: under the root it was found in, never listed as a run.
TRASH_DIR = f"{TMP_PREFIX}trash"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# open_nofollow's modes, as os.open flags (O_CREAT where the mode creates the file).
_MODES = {"rb": os.O_RDONLY, "r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
          "a+": os.O_RDWR | os.O_APPEND | os.O_CREAT, "r+b": os.O_RDWR}


class UnsafeFolder(ValueError):
    """A run folder that holds a symlink (or a path that leads through one); the message names it."""


def open_nofollow(path: Path, mode: str = "rb", encoding: str | None = "utf-8"):
    """``path`` opened in ``mode`` (rb, r, a, a+, r+b) without following a symlink at its last component.

    Raises OSError when it is a symlink (ELOOP) or anything but a regular file (a FIFO is opened
    non-blocking, so it cannot hang the caller, then refused)."""
    fd = os.open(path, _MODES[mode] | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: Path):
    """``path`` opened for binary reading when it is a regular file, else None. A FIFO or device named like
    a run's file would block a reader forever, and a symlink could point out of the folder, so both count
    as absent."""
    try:
        return open_nofollow(path, "rb")
    except OSError:
        return None


def symlink_in(folder: Path) -> Path | None:
    """The first symlink found anywhere under ``folder`` (``folder`` itself is what the user named), or None."""
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                return Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return None


def refuse_symlinks(folder: Path) -> None:
    """Raise UnsafeFolder naming the first symlink under ``folder``: a run never makes one, so a folder that
    holds one was crafted or copied with links, and writing into it could write wherever they point."""
    link = symlink_in(folder)
    if link is not None:
        try:
            target = os.readlink(link)
        except OSError:
            target = "?"
        raise UnsafeFolder(f"{folder} holds a symlink, {link} -> {target}, and a run folder is never written "
                           f"through one: replace the link with a copy of the real file (or remove it) and try again")


def create_temporary(path: Path) -> tuple[int, Path]:
    """(fd, name) of a new, empty temporary beside ``path`` that no one else made: an unpredictable name,
    created with O_CREAT|O_EXCL|O_NOFOLLOW, so nothing planted in the folder can be written through."""
    path = Path(path)
    while True:
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text``: a fresh temporary beside it, fsync, rename (a symlink at ``path`` is
    replaced, not followed), fsync the folder. Any failure, a full disk included, removes the temporary."""
    path = Path(path)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def replacing(path: Path):
    """A text buffer (for ``csv.writer`` and the like) that replaces ``path`` through ``write_atomic`` when the
    block ends: a symlink planted at ``path`` is replaced, never written through; an exception writes nothing."""
    buffer = io.StringIO(newline="")
    yield buffer
    write_atomic(path, buffer.getvalue())


def write_json_atomic(path: Path, data: dict, reserve: int = 0) -> None:
    """``data`` as indented JSON (values JSON cannot hold written as text), replaced atomically. ``reserve``
    bytes of trailing spaces (which JSON ignores) leave room for ``overwrite_json`` to record more in place
    when a full disk allows no temporary file."""
    write_atomic(path, _json_text(data) + " " * reserve)


def overwrite_json(path: Path, data: dict) -> None:
    """Rewrite an existing regular ``path`` in place: the last resort on a full disk, where the temporary of
    an atomic write cannot be made. Only when the new JSON fits in the file's current size (padded with
    spaces, which JSON ignores): no new block is needed, so a full disk cannot leave the file torn. Raises
    OSError (ENOSPC) when it does not fit."""
    text = _json_text(data).encode("utf-8")
    with open_nofollow(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if len(text) > size:
            raise OSError(errno.ENOSPC, f"{path}: the new record ({len(text)} bytes) does not fit in place "
                                        f"({size} bytes)")
        f.write(text + b" " * (size - len(text)))
        f.flush()
        os.fsync(f.fileno())


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=1, default=str, allow_nan=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself lives in the folder)."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_levels(root: Path, parts: tuple[str, ...]) -> list[int]:
    """File descriptors of ``root`` and each folder of ``parts`` below it, each level opened with O_NOFOLLOW
    relative to the one above (a level swapped for a symlink fails with ELOOP or ENOTDIR)."""
    fds = [os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)]
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise UnsafeFolder(f"{part!r} is not a plain folder name under {root}")
            fds.append(os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fds[-1]))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def size_under(root: Path, relative: Path) -> int:
    """Bytes of the regular files in ``root/relative``, reached and walked through directory descriptors
    (no symlink followed on the way or inside)."""
    fds = _open_levels(Path(root), Path(relative).parts)
    total = 0
    try:
        for _dir, _dirs, files, dir_fd in os.fwalk(".", dir_fd=fds[-1], follow_symlinks=False):
            for name in files:
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    finally:
        for fd in fds:
            os.close(fd)
    return total


def remove_under(root: Path, relative: Path) -> None:
    """Delete the folder ``root/relative`` (relative: one or more plain names) through directory file
    descriptors: every level opened from ``root`` with O_NOFOLLOW, the folder renamed into TRASH_DIR under
    ``root``, then removed there by ``shutil.rmtree(dir_fd=...)``, which never follows a symlink. A parent
    swapped for a symlink at any moment makes it fail (OSError or UnsafeFolder), never delete outside ``root``."""
    parts = Path(relative).parts
    if not parts:
        raise UnsafeFolder(f"refusing to delete the runs root {root} itself")
    fds = _open_levels(Path(root), parts[:-1])
    try:
        info = os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeFolder(f"{Path(root) / relative} is not a plain folder (a symlink or a file)")
        try:
            os.mkdir(TRASH_DIR, 0o700, dir_fd=fds[0])
        except FileExistsError:
            pass
        trash = os.open(TRASH_DIR, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fds[0])
        try:
            doomed = f"{parts[-1]}.{secrets.token_hex(6)}"
            os.rename(parts[-1], doomed, src_dir_fd=fds[-1], dst_dir_fd=trash)
            shutil.rmtree(doomed, dir_fd=trash)
        finally:
            os.close(trash)
        with contextlib.suppress(OSError):
            os.rmdir(TRASH_DIR, dir_fd=fds[0])  # empty unless another delete is under way
    finally:
        for fd in fds:
            os.close(fd)

