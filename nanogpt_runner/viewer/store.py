"""Every run under the runs root, kept current at the cost of what changed.

A refresh stats two files per run and reads only runs whose files moved. Finished runs are listed
from run.json and the last metrics line; their full curves are read only when someone selects them
(``load``), so 10,000 finished runs list in about the time it takes to read their run.json files.
Runs that are still going (or have no summary) are followed line by line with ``RunReader``.
Each run carries a ``version`` that grows whenever it changed, so the page can skip work. A finished run
(completed, failed, interrupted) is not polled at every tick: it is checked again every ``finished_check_s``
(a resume or an edit of its tags shows then, or at once after ``poll(everything=True)``). Every run is named
by ``analysis.naming`` (a sweep job by its overrides), again only when runs came, went or were renamed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanogpt_runner.analysis.naming import name_runs
from nanogpt_runner.analysis.records import RunRecord
from nanogpt_runner.runs import annotations
from nanogpt_runner.runs.annotations import ANNOTATIONS_FILE, Annotations
from nanogpt_runner.runs.rundir import (
    MAX_EXTRA_METRICS,
    METRICS_FILE,
    RUN_FILE,
    MetricsTail,
    RunReader,
    find_runs,
    open_regular,
    read_run,
)

# How much of a metrics file's end to read for its newest train line (a line is about 250 bytes).
TAIL_BYTES = 4 * 1024
MAX_TAIL_BYTES = 256 * 1024
FINISHED = ("completed", "failed", "interrupted", "unsupported")  # run.json statuses a run does not leave alone


@dataclass
class Entry:
    record: RunRecord
    stamp: tuple = ()
    reader: RunReader | None = None
    version: int = 0
    notes: list[str] = field(default_factory=list)
    annotations: Annotations = field(default_factory=Annotations)  # tags, note, archived (annotations.json)


class RunStore:
    """The runs under ``root``; ``poll()`` brings them up to date, ``load(ids)`` reads their curves."""

    def __init__(self, root: Path, min_rescan_s: float = 2.0, finished_check_s: float | None = None):
        self.root = Path(root).resolve()
        self.min_rescan_s = min_rescan_s
        self.finished_check_s = 5 * min_rescan_s if finished_check_s is None else finished_check_s
        self.entries: dict[str, Entry] = {}
        self.version = 0  # grows whenever any run appeared, vanished or changed
        self._lock = threading.RLock()
        self._next_scan = 0.0
        self._next_finished_check = 0.0
        self._naming: dict[str, tuple] = {}  # run id -> what its name is made of, when it was last named

    # -- keeping up to date ------------------------------------------------------------------------

    def poll(self, everything: bool = False) -> bool:
        """Find new runs (at most every ``min_rescan_s``, less often when the walk is slow), refresh
        the ones whose files changed (finished runs only every ``finished_check_s``, or with ``everything``),
        drop the ones that vanished. True when anything changed."""
        with self._lock:
            now = time.monotonic()
            changed = self._scan() if everything or now >= self._next_scan else False
            check_finished = everything or now >= self._next_finished_check
            if check_finished:
                self._next_finished_check = now + self.finished_check_s
            for run_id in list(self.entries):
                if check_finished or self.entries[run_id].record.info.get("status") not in FINISHED:
                    changed |= self._refresh(run_id)
            if changed:
                self._name()
                self.version += 1
            return changed

    def _name(self) -> None:
        """Name every run again when what names are made of (ids, sweeps, overrides, names) changed: a
        renamed run's version grows, so everything drawn with its old name is drawn again."""
        naming = {i: (e.record.sweep, repr(e.record.info.get("overrides")), e.record.name)
                  for i, e in self.entries.items()}
        if naming == self._naming:
            return
        self._naming = naming
        for record in name_runs([e.record for e in self.entries.values()]):
            self.entries[record.id].version += 1

    def rescan_soon(self) -> None:
        """Look for new runs at the next poll (a run was just launched from the page)."""
        self._next_scan = 0.0

    def _scan(self) -> bool:
        start = time.monotonic()
        found = {str(path.relative_to(self.root)): path for path in find_runs(self.root)}
        added = found.keys() - self.entries.keys()
        for run_id in added:
            self.entries[run_id] = Entry(RunRecord(run_id, found[run_id], {}))
        elapsed = time.monotonic() - start
        # On a slow or huge tree, walking every tick would be the refresh's whole cost.
        self._next_scan = time.monotonic() + max(self.min_rescan_s, 20 * elapsed)
        return bool(added)

    def _refresh(self, run_id: str) -> bool:
        entry = self.entries[run_id]
        stamp = _stamp(entry.record.path)
        if stamp is None:  # run.json is gone: the run was deleted (or moved) while we watched
            del self.entries[run_id]
            return True
        if stamp == entry.stamp:
            return False
        entry.stamp = stamp
        info = read_run(entry.record.path)
        if info is None:
            entry.notes = ["run.json is unreadable (not a regular file holding a JSON object of a run); showing what "
                           "was last read"]
            if not entry.record.info:
                entry.record.info = {"name": Path(run_id).name, "status": "unknown"}
        else:
            entry.notes = []
            entry.record.info = info
        if entry.reader is not None or _needs_curves(entry.record.info):
            self._read_metrics(entry)
        else:
            entry.record.last_train = last_train_line(entry.record.path / METRICS_FILE)
        entry.annotations = annotations.read(entry.record.path, entry.record.info)
        entry.version += 1
        return True

    # -- curves ------------------------------------------------------------------------------------

    def load(self, run_ids: list[str]) -> None:
        """Make sure the full metrics of these runs are read (unknown ids are ignored)."""
        with self._lock:
            for run_id in run_ids:
                entry = self.entries.get(run_id)
                if entry is not None and entry.reader is None:
                    self._read_metrics(entry)
                    entry.version += 1
                    self.version += 1

    def _read_metrics(self, entry: Entry) -> None:
        if entry.reader is None:
            entry.reader = RunReader(entry.record.path)
        entry.reader.refresh()  # run.json again (cheap) and only the new metrics bytes
        if entry.reader.info:
            entry.record.info = entry.reader.info
        metrics = entry.reader.metrics
        entry.record.metrics = metrics
        entry.record.last_train = metrics.train[-1] if metrics.train else None
        garbage, dropped = entry.reader.tail.garbage, entry.reader.tail.dropped
        entry.notes = [n for n in entry.notes if "unreadable line" not in n and "unregistered" not in n]
        if garbage:
            entry.notes.append(f"{garbage} unreadable line(s) in {METRICS_FILE} skipped")
        if dropped:
            entry.notes.append(f"{dropped} value(s) of unregistered metrics dropped: a run keeps the first "
                               f"{MAX_EXTRA_METRICS} metric names the registry does not know")

    # -- lookups -----------------------------------------------------------------------------------

    def get(self, run_id: str) -> Entry | None:
        """The entry for an id the page sent, or None: only ids found under the root are ever used."""
        return self.entries.get(run_id) if isinstance(run_id, str) else None

    def records(self) -> list[RunRecord]:
        """All runs, newest first."""
        with self._lock:
            entries = list(self.entries.values())
        return [e.record for e in sorted(entries, key=_newest_first)]

    def versions(self, run_ids: list[str]) -> tuple:
        return tuple((i, self.entries[i].version if i in self.entries else -1) for i in run_ids)


def _newest_first(entry: Entry) -> tuple:
    start = entry.record.info.get("start_time")
    return (-(start if isinstance(start, (int, float)) and not isinstance(start, bool) else 0.0), entry.record.id)


def _needs_curves(info: dict) -> bool:
    """Runs without a final summary (still going, stalled, crashed) get their numbers from the curves."""
    return info.get("status") in ("running", "queued") or not isinstance(info.get("summary"), dict)


def _stamp(run_dir: Path) -> tuple | None:
    """What a run's files look like now; None when run.json is gone."""
    try:
        meta = os.lstat(run_dir / RUN_FILE)
    except OSError:
        return None
    try:
        metrics = os.lstat(run_dir / METRICS_FILE)
        metrics_stamp = (metrics.st_size, metrics.st_ino)
    except OSError:
        metrics_stamp = (-1, 0)
    try:
        sidecar = os.lstat(run_dir / ANNOTATIONS_FILE)
        sidecar_stamp = (sidecar.st_mtime_ns, sidecar.st_size, sidecar.st_ino)
    except OSError:
        sidecar_stamp = ()
    return (meta.st_mtime_ns, meta.st_size, meta.st_ino, *metrics_stamp, sidecar_stamp)


def last_train_line(path: Path) -> dict | None:
    """The newest train line of a metrics file, read from its end: 4 KB, more only when needed."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    window = TAIL_BYTES
    while True:
        start = max(0, size - window)
        train = [r for r in _records_from(path, start) if r.get("kind") == "train"]
        if train or start == 0 or window >= MAX_TAIL_BYTES:
            return train[-1] if train else None
        window *= 8


def _records_from(path: Path, start: int) -> list[dict]:
    """The whole lines of ``path`` from byte ``start`` on (the cut line at ``start`` skipped)."""
    tail = MetricsTail(path)
    if start:
        f = open_regular(path)
        if f is None:
            return []
        try:
            with f:
                f.seek(start)
                head = f.read(TAIL_BYTES)
        except OSError:
            return []
        newline = head.find(b"\n")
        if newline < 0:
            return []
        start += newline + 1
    tail.offset = start
    records, _ = tail.poll()
    return records
