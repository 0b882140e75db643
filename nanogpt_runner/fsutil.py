"""Atomic file replacement: the one way the runner rewrites a file that someone may be reading.

run.json, checkpoint pointers, a data preparation's progress and the peak-FLOPs cache are all replaced
this way, so a reader (or a crash, or a full disk) sees the old file or the new one, never half of
either, and a failed write leaves no temporary file behind. This module imports no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Temporary names start with this; folders that hold them (checkpoints/) skip and clean up such names.
TMP_PREFIX = ".tmp-"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary name beside it, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as indented JSON (values JSON cannot hold written as text), replaced atomically."""
    write_atomic(path, _json_text(data))


def overwrite_json(path: Path, data: dict) -> None:
    """Rewrite an existing ``path`` in place, not atomically: the last resort on a full disk, where the
    temporary file of an atomic write cannot be made (a reader may see a torn file meanwhile)."""
    with open(path, "r+", encoding="utf-8") as f:
        f.write(_json_text(data))
        f.truncate()


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=1, default=str, allow_nan=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself lives in the folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
