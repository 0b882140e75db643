"""The run directory: the one contract between the runner and everything that reads runs.

    run.json        the run's record (status, times, layout, versions...), rewritten atomically
    metrics.jsonl   append-only, one JSON object per line: {"kind": "train"|"eval"|"event", ...}
    config.yaml     the resolved config the run trained with
    train.log       what the console showed
    checkpoints/    see nanogpt_runner.checkpoint.state
    annotations.json  tags, note, archived flag edited in the viewer (runs.annotations); never the runner's
    .lock           held by the live nanogpt-run (launch.run_dir_lock)

Readers must survive torn last lines, garbage, empty or vanished files and files that grow while
being read, so ``MetricsTail`` reads by byte offset and only ever consumes whole lines.
``METRICS`` is the one table of what a metrics line may hold and how every reader shows it.
This module imports no torch: the viewer and the analysis use it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nanogpt_runner.fsutil import TRASH_DIR, open_nofollow, open_regular, write_json_atomic

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"  # held (flock) by the nanogpt-run training into the run directory, for as long as it lives
# Held shared (flock) by every rank of a process group while it lives: the launcher takes it exclusively to wait
# for ranks that outlive the torchrun agent (nanogpt_runner.launch.torchrun.wait_for_ranks).
RANKS_LOCK_FILE = ".ranks.lock"
# A running run whose heartbeat is older than this is shown as stalled (its process is likely gone).
STALE_AFTER_S = 120.0
# While training, run.json's step and heartbeat are rewritten at most this often (metrics.jsonl has every
# step at once): an fsynced rewrite at every metrics line cost a fast GPU a tenth of its step time.
PROGRESS_WRITE_EVERY_S = 5.0
SKIP_DIRS = {CHECKPOINT_DIR, ".hydra", "__pycache__", ".git", TRASH_DIR}
# Bounds on what a reader holds in memory, whatever a run folder contains.
MAX_RUN_FILE_BYTES = 16 * 1024 * 1024
# Trailing spaces after each run.json: room for the ending (status, the error's last line, end time) to be
# written in place when a full disk leaves no room for the temporary file of an atomic write.
RUN_FILE_RESERVE = 1024
MAX_POLL_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32  # a real run.json nests a few levels (config sections, lists)
MAX_EXACT_INT_DIGITS = 15  # longer integers are read as floats: every value stays JSON-safe (64-bit, and JS)
MAX_EXACT_INT = 2**53  # whole numbers past this are kept as floats wherever they are computed, too
MAX_EXTRA_METRICS = 64  # fields of metrics lines the registry does not name, kept per run; the rest are dropped


TRAIN, EVAL, EVENT = "train", "eval", "event"  # the kinds of metrics lines


@dataclass(frozen=True)
class Metric:
    """One field of metrics.jsonl lines, and how every reader (analysis, viewer, report) treats it.

    ``summary`` names the per-run number (a column of summary.csv) made from the field's train and
    eval lines by ``aggregate``: "last" value, "max", "best" (min or max as ``better`` says) or
    "steady" (the median without the first window, which holds start-up). ``column`` is its title in
    the viewer's runs table (None: CSV only). A unit of "%" means a fraction shown as a percentage.
    """

    name: str
    kinds: tuple[str, ...]  # the kinds of line that carry it
    label: str
    unit: str = ""
    better: str | None = None  # "lower" | "higher" | None (neither, e.g. the learning rate)
    plot: str | None = None  # the title of the viewer plot drawing it; metrics with one title share the plot
    smooth: bool = False  # the EMA smoothing slider applies (noisy window values)
    log_scale: bool = False  # the log10 checkbox applies
    summary: str | None = None
    aggregate: str = "last"
    column: str | None = None
    decimals: int = 4


METRICS: tuple[Metric, ...] = (
    Metric("kind", (TRAIN, EVAL, EVENT), "line kind"),
    Metric("time", (TRAIN, EVAL, EVENT), "unix time", "s"),
    Metric("step", (TRAIN, EVAL, EVENT), "step", summary="steps", aggregate="max", column="steps", decimals=0),
    Metric("tokens", (TRAIN, EVAL), "tokens", summary="tokens", aggregate="max", decimals=0),
    Metric("loss", (TRAIN, EVENT), "train loss", better="lower", plot="loss", smooth=True, log_scale=True,
           summary="last_train_loss", column="last train loss"),
    Metric("val_loss", (EVAL, EVENT), "val loss", better="lower", plot="loss", log_scale=True,
           summary="best_val_loss", aggregate="best", column="best val loss"),
    Metric("train_loss", (EVAL,), "train loss (eval)", better="lower"),
    # Bits per UTF-8 byte of the evaluated text: comparable between runs with different tokenizers.
    Metric("val_bpb", (EVAL,), "val bits per byte", better="lower", plot="bits per byte", summary="best_val_bpb",
           aggregate="best", column="best val bpb"),
    Metric("train_bpb", (EVAL,), "train bits per byte (eval)", better="lower", plot="bits per byte"),
    # Multiple-choice tasks (eval.tasks, docs/evals.md) at the evaluations that score them: the mean over the tasks
    # (one task: its own numbers); each task's numbers are the "tasks" event line's.
    Metric("task_acc", (EVAL,), "task accuracy", "%", better="higher", plot="task accuracy", summary="task_acc",
           column="task acc %"),
    Metric("task_acc_norm", (EVAL,), "task accuracy (per character)", "%", better="higher", plot="task accuracy",
           summary="task_acc_norm"),
    Metric("task_acc_token", (EVAL,), "task accuracy (per token)", "%", better="higher", plot="task accuracy"),
    Metric("task_centered", (EVAL,), "task centered accuracy (CORE)", better="higher", summary="task_centered",
           column="task centered"),
    Metric("task_acc_low", (EVAL,), "task accuracy, 95% interval low", "%"),
    Metric("task_acc_high", (EVAL,), "task accuracy, 95% interval high", "%"),
    Metric("task_items", (EVAL,), "task items", decimals=0),
    Metric("task_seconds", (EVAL,), "task scoring time", "s", better="lower"),
    Metric("lr", (TRAIN,), "learning rate", plot="learning rate"),
    Metric("grad_norm", (TRAIN, EVENT), "grad norm"),
    Metric("tok_per_s", (TRAIN,), "tokens/s", better="higher", plot="tokens/s", smooth=True, summary="tok_per_s",
           aggregate="steady", column="tokens/s", decimals=0),
    Metric("step_ms", (TRAIN,), "step time", "ms", better="lower"),
    Metric("elapsed_s", (TRAIN, EVAL), "time", "s", summary="elapsed_s", aggregate="max", column="time (s)",
           decimals=1),
    Metric("mem_gb", (TRAIN,), "memory", "GB", better="lower", plot="memory (GB)"),
    Metric("peak_mem_gb", (TRAIN,), "peak memory", "GB", better="lower", summary="peak_mem_gb", aggregate="max",
           column="peak mem (GB)", decimals=3),
    # perf.memory's estimate of the peak (the process's baseline added on a CPU), beside the measured one.
    Metric("est_peak_mem_gb", (TRAIN,), "estimated peak memory", "GB", summary="est_peak_mem_gb", aggregate="max",
           column="est. mem (GB)", decimals=3),
    Metric("mfu", (TRAIN,), "MFU", "%", better="higher", summary="mfu", aggregate="steady", column="MFU %",
           decimals=2),
    Metric("skipped_steps", (TRAIN,), "skipped steps", better="lower"),
    # Event lines: {"kind": "event", "event": NAME, ...}; their fields are facts, not curves.
    Metric("event", (EVENT,), "event"),
    Metric("checkpoint", (EVENT,), "checkpoint resumed from"),
    Metric("changes", (EVENT,), "config changes on resume"),
    Metric("discarded", (EVENT,), "checkpoints discarded on resume"),
    Metric("path", (EVENT,), "checkpoint path"),
    Metric("reason", (EVENT,), "why the checkpoint was saved"),
    Metric("seconds", (EVENT,), "checkpoint save time", "s"),
    Metric("removed", (EVENT,), "checkpoints pruned"),
    Metric("action", (EVENT,), "what a non-finite step did"),
    Metric("tasks", (EVENT,), "each task's numbers at a scoring (tasks events)"),
    Metric("stop_reason", (EVENT,), "why the run stopped early (a budget or an early stop; early_stop events)"),
)
METRIC = {metric.name: metric for metric in METRICS}


def metric_names(kind: str) -> list[str]:
    """The registered fields of one kind of line, in registry order."""
    return [m.name for m in METRICS if kind in m.kinds]


def plots() -> dict[str, list[Metric]]:
    """The viewer's plots in registry order: each named by its first metric, the metrics that share its
    ``plot`` title drawn together (train and val loss)."""
    by_title: dict[str, list[Metric]] = {}
    for metric in METRICS:
        if metric.plot is not None:
            by_title.setdefault(metric.plot, []).append(metric)
    return {metrics[0].name: metrics for metrics in by_title.values()}


def axis_title(metric: Metric) -> str:
    """"peak memory (GB)": the label, and the unit in brackets when it has one."""
    return f"{metric.label} ({metric.unit})" if metric.unit else metric.label


def summarized() -> list[Metric]:
    """The metrics that give a run a summary number (summary.csv, the runs table), in registry order."""
    return [m for m in METRICS if m.summary is not None]


def _json_safe(value):
    """NaN and inf become strings so every metrics line stays strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunWriter:
    """Rank 0's writer of run.json and metrics.jsonl.

    Subscribers (the trackers of nanogpt_runner.runs.trackers) see every run.json update and metrics line after
    it is on disk, so a tracker mirrors exactly what the files hold; they must not raise."""

    def __init__(self, run_dir: Path, initial: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record = read_run(self.run_dir) or {}
        self.record.update(initial or {})
        self._metrics = open_nofollow(self.run_dir / METRICS_FILE, "a")  # a planted symlink is refused, not followed
        self._subscribers: list = []
        self._written_at = -math.inf  # time.monotonic() of the last run.json write

    def subscribe(self, subscriber) -> None:
        """``subscriber.update(record)`` after each run.json write, ``subscriber.log(line)`` after each line."""
        self._subscribers.append(subscriber)

    def update(self, **fields) -> None:
        self.record.update(fields, heartbeat=time.time())
        write_json_atomic(self.run_dir / RUN_FILE, self.record, reserve=RUN_FILE_RESERVE)
        self._written_at = time.monotonic()
        for subscriber in self._subscribers:
            subscriber.update(self.record)

    def progress(self, **fields) -> None:
        """Training progress: recorded at once, written (with the heartbeat) when the last write is over
        PROGRESS_WRITE_EVERY_S old; the next ``update`` writes whatever is still pending."""
        self.record.update(fields)
        if time.monotonic() - self._written_at >= PROGRESS_WRITE_EVERY_S:
            self.update()

    def log(self, kind: str, **fields) -> None:
        """Append one metrics line and flush it, so a reader sees it at once and a crash loses none."""
        line = {"kind": kind, **{k: _json_safe(v) for k, v in fields.items()}, "time": time.time()}
        self._metrics.write(json.dumps(line) + "\n")
        self._metrics.flush()
        for subscriber in self._subscribers:
            subscriber.log(line)

    def event(self, event: str, **fields) -> None:
        self.log("event", event=event, **fields)

    def close(self) -> None:
        self._metrics.close()


def read_run(run_dir: Path) -> dict | None:
    """run.json as a dict, or None when it is missing, unreadable, not a regular file, larger than
    MAX_RUN_FILE_BYTES, nested deeper than MAX_JSON_DEPTH, or not a JSON object."""
    f = open_regular(Path(run_dir) / RUN_FILE)
    if f is None:
        return None
    try:
        with f:
            raw = f.read(MAX_RUN_FILE_BYTES + 1)
        data = loads(raw.decode("utf-8")) if len(raw) <= MAX_RUN_FILE_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and not _too_deep(data) else None


_DECODERS = threading.local()  # a decoder per thread: json.loads(parse_int=...) built one per line, a fifth of a
# metrics file's parse
NON_FINITE_TEXTS = ("nan", "inf", "-inf")  # how the trainer writes a NaN/inf metric (JSON has no such number)


def loads(text: str):
    """JSON from a run folder, every integer of more than MAX_EXACT_INT_DIGITS digits read as a float: a
    crafted ``"step": 100000000000000000000`` would otherwise pass through to every page and API that
    sends it on (orjson refuses integers past 64 bits) and cost Python's int parser time per digit."""
    decoder = getattr(_DECODERS, "decoder", None)
    if decoder is None:
        decoder = _DECODERS.decoder = json.JSONDecoder(parse_int=_bounded_int)
    return decoder.decode(text)


def _bounded_int(digits: str) -> int | float:
    return float(digits) if len(digits.lstrip("-")) > MAX_EXACT_INT_DIGITS else int(digits)


def _too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests deeper than ``limit``: no run writes that, and a crafted file could make
    every recursive reader of the run (config flattening, diffs) fail."""
    level = [value]
    for _ in range(limit):
        level = [v for item in level if isinstance(item, (dict, list))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return True


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
    start, and ``poll`` reports that with ``reset=True`` so the caller drops what it had. Fields the
    registry (``METRIC``) does not name are kept for the first MAX_EXTRA_METRICS such names only; later
    ones are dropped and counted in ``dropped``, so a file with 300,000 distinct keys costs one parse,
    not a 300,000-column frame at every refresh.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.garbage = 0
        self.dropped = 0  # values of unregistered fields past the first MAX_EXTRA_METRICS names
        self._extra: set[str] = set()
        self._inode: int | None = None

    def poll(self) -> tuple[list[dict], bool]:
        """(new records, reset)."""
        try:
            info = os.lstat(self.path)
        except OSError:
            return [], False
        reset = False
        if info.st_size < self.offset or (self._inode is not None and info.st_ino != self._inode):
            self.offset, self.garbage, self.dropped, reset = 0, 0, 0, True
            self._extra = set()
        self._inode = info.st_ino
        f = open_regular(self.path) if info.st_size != self.offset else None
        if f is None:
            return [], reset
        try:
            with f:
                f.seek(self.offset)
                chunk = f.read(min(info.st_size - self.offset, MAX_POLL_BYTES))
        except OSError:
            return [], reset
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) == MAX_POLL_BYTES:  # one line longer than a poll may read: skipped, not kept in memory
                self.offset += len(chunk)
                self.garbage += 1
            return [], reset
        self.offset += end + 1
        records = []
        for raw in chunk[:end].split(b"\n"):
            record = _parse_line(raw)
            if record is None:
                self.garbage += raw.strip() != b""
            else:
                records.append(self._capped(record))
        return records, reset

    def _capped(self, record: dict) -> dict:
        """``record`` without the unregistered fields past this file's first MAX_EXTRA_METRICS names."""
        if not record.keys() - METRIC.keys() - self._extra:  # every field known (nearly every line): as it is
            return record
        kept = {}
        for key, value in record.items():
            if key not in METRIC and key not in self._extra:
                if len(self._extra) >= MAX_EXTRA_METRICS:
                    self.dropped += 1
                    continue
                self._extra.add(key)
            kept[key] = value
        return kept


def _parse_line(raw: bytes) -> dict | None:
    try:
        record = loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    return {k: float(v) if v in NON_FINITE_TEXTS else v for k, v in record.items()}  # a call per value cost more


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
