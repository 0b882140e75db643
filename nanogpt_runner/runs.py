"""The run directory: the one contract between the runner and everything that reads runs.

    run.json        the run's record (status, times, layout, versions...), rewritten atomically
    metrics.jsonl   append-only, one JSON object per line: {"kind": "train"|"eval"|"event", ...}
    config.yaml     the resolved config the run trained with
    train.log       what the console showed
    checkpoints/    see nanogpt_runner.checkpoint

Readers must survive torn last lines, garbage, empty or vanished files and files that grow while
being read, so ``MetricsTail`` reads by byte offset and only ever consumes whole lines.
This module imports no torch: the viewer and the analysis use it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
STATUSES = ("queued", "running", "completed", "failed", "interrupted")
# A running run whose heartbeat is older than this is shown as stalled (its process is likely gone).
STALE_AFTER_S = 120.0
SKIP_DIRS = {CHECKPOINT_DIR, ".hydra", "__pycache__", ".git"}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary name, fsync, rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_safe(value):
    """NaN and inf become strings so every metrics line stays strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunWriter:
    """Rank 0's writer of run.json and metrics.jsonl."""

    def __init__(self, run_dir: Path, initial: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record = read_run(self.run_dir) or {}
        self.record.update(initial or {})
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")

    def update(self, **fields) -> None:
        self.record.update(fields, heartbeat=time.time())
        write_json_atomic(self.run_dir / RUN_FILE, self.record)

    def log(self, kind: str, **fields) -> None:
        """Append one metrics line and flush it, so a reader sees it at once and a crash loses none."""
        line = {"kind": kind, **{k: _json_safe(v) for k, v in fields.items()}, "time": time.time()}
        self._metrics.write(json.dumps(line) + "\n")
        self._metrics.flush()

    def event(self, event: str, **fields) -> None:
        self.log("event", event=event, **fields)

    def close(self) -> None:
        self._metrics.close()


def read_run(run_dir: Path) -> dict | None:
    """run.json as a dict, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def effective_status(run: dict, now: float | None = None) -> str:
    """The status to show: "stalled" for a run that claims to be running but stopped beating."""
    status = run.get("status", "unknown")
    heartbeat = run.get("heartbeat")
    if status == "running" and isinstance(heartbeat, (int, float)):
        if (now or time.time()) - heartbeat > STALE_AFTER_S:
            return "stalled"
    return status if isinstance(status, str) else "unknown"


def find_runs(root: Path) -> Iterator[Path]:
    """Every folder under ``root`` holding a run.json (single runs and sweep jobs), unreadable folders skipped."""
    for current, dirs, files in os.walk(root, onerror=lambda _err: None):
        if RUN_FILE in files:
            dirs.clear()
            yield Path(current)
        else:
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)


class MetricsTail:
    """Incremental reader of one metrics.jsonl: each ``poll`` costs the new bytes, not the file.

    A torn last line stays unread until its newline arrives; lines that are not JSON objects are
    counted in ``garbage`` and skipped. A file that shrank or was replaced is read again from the
    start, and ``poll`` reports that with ``reset=True`` so the caller drops what it had.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.garbage = 0
        self._inode: int | None = None

    def poll(self) -> tuple[list[dict], bool]:
        """(new records, reset)."""
        try:
            stat = self.path.stat()
        except OSError:
            return [], False
        reset = False
        if stat.st_size < self.offset or (self._inode is not None and stat.st_ino != self._inode):
            self.offset, self.garbage, reset = 0, 0, True
        self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return [], reset
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(stat.st_size - self.offset)
        except OSError:
            return [], reset
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], reset
        self.offset += end + 1
        records = []
        for raw in chunk[:end].split(b"\n"):
            record = _parse_line(raw)
            if record is None:
                self.garbage += raw.strip() != b""
            else:
                records.append(record)
        return records, reset


def _parse_line(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    return {k: _number(v) for k, v in record.items()}


def _number(value):
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


@dataclass
class RunMetrics:
    """A run's metrics as one clean curve: a ``resume`` event at step k supersedes the lines after k
    that the interrupted attempt had written."""

    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def add(self, records: list[dict]) -> None:
        for record in records:
            kind = record["kind"]
            if kind == "event" and record.get("event") == "resume":
                step = record.get("step", 0)
                self.train = [r for r in self.train if r.get("step", 0) <= step]
                self.eval = [r for r in self.eval if r.get("step", 0) <= step]
            if kind == "event":
                self.events.append(record)
            elif kind in ("train", "eval"):
                getattr(self, kind).append(record)


class RunReader:
    """A run directory followed live: ``refresh`` re-reads run.json and only the new metrics bytes."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.tail = MetricsTail(self.run_dir / METRICS_FILE)
        self.metrics = RunMetrics()
        self.info: dict = {}

    def refresh(self) -> bool:
        """True when anything changed since the last refresh."""
        info = read_run(self.run_dir)
        changed = info is not None and info != self.info
        if info is not None:
            self.info = info
        records, reset = self.tail.poll()
        if reset:
            self.metrics = RunMetrics()
        self.metrics.add(records)
        return changed or reset or bool(records)

    @property
    def exists(self) -> bool:
        return (self.run_dir / RUN_FILE).exists()
