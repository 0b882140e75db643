"""A run's tags, note and archived flag: what a person says about a run, as opposed to what it recorded.

They start as ``run.tags`` / ``run.notes`` in the run's config (run.json). The viewer edits them in a
sidecar, RUN_DIR/annotations.json, which the runner never writes, so an edit survives a resumed run;
``read`` merges the sidecar over the config. The sidecar may come from anyone: every field is checked and
a bad one ignored. This module imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanogpt_runner.config.schema import MAX_NOTES_CHARS, RUN_NAME
from nanogpt_runner.fsutil import open_regular, write_json_atomic

ANNOTATIONS_FILE = "annotations.json"
MAX_TAGS = 32
MAX_SIDECAR_BYTES = 64 * 1024


class AnnotationError(ValueError):
    """A tag or note that cannot be stored, or a run folder that cannot be written; the message says why."""


@dataclass
class Annotations:
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    archived: bool = False  # hidden from the viewer's default list


def read(run_dir: Path, record: dict) -> Annotations:
    """The run's annotations: each field from the sidecar where it holds a valid one, else from the config's
    run.tags/run.notes."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    marks = Annotations(_tags(run.get("tags")) or [], run.get("notes") if _is_note(run.get("notes")) else "")
    sidecar = _sidecar(Path(run_dir))
    if (tags := _tags(sidecar.get("tags"))) is not None:
        marks.tags = tags
    if _is_note(sidecar.get("notes")):
        marks.notes = sidecar["notes"]
    marks.archived = sidecar.get("archived") is True
    return marks


def _tags(value) -> list[str] | None:
    """The plain-name tags of a list (at most MAX_TAGS), None when ``value`` is not a list."""
    if not isinstance(value, list):
        return None
    return [t for t in value if isinstance(t, str) and RUN_NAME.match(t)][:MAX_TAGS]


def _is_note(value) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NOTES_CHARS


def _sidecar(run_dir: Path) -> dict:
    f = open_regular(run_dir / ANNOTATIONS_FILE)
    if f is None:
        return {}
    try:
        with f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_SIDECAR_BYTES else None
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in data.items() if k in ("tags", "notes", "archived")} if isinstance(data, dict) else {}


def parse_tags(text: str) -> list[str]:
    """"baseline, lr-sweep" -> ["baseline", "lr-sweep"]; a tag that is not a plain name is refused."""
    if not isinstance(text, str):
        raise AnnotationError("Tags must be text: names separated by commas or spaces.")
    tags = list(dict.fromkeys(t for t in text.replace(",", " ").split() if t))
    bad = [t for t in tags if not RUN_NAME.match(t)]
    if bad:
        raise AnnotationError(f"Not a tag: {bad[0][:64]!r}. A tag is 1-64 letters, digits, '.', '_' or '-'.")
    if len(tags) > MAX_TAGS:
        raise AnnotationError(f"{len(tags)} tags: a run takes at most {MAX_TAGS}.")
    return tags


def check_notes(text: str) -> str:
    if not isinstance(text, str):
        raise AnnotationError("The note must be text.")
    if len(text) > MAX_NOTES_CHARS:
        raise AnnotationError(f"The note is {len(text)} characters: keep it to {MAX_NOTES_CHARS} at most.")
    return text


def write(run_dir: Path, annotations: Annotations) -> None:
    """Replace the sidecar atomically (a reader sees the old or the new file, never half of one)."""
    try:
        write_json_atomic(Path(run_dir) / ANNOTATIONS_FILE, asdict(annotations))
    except OSError as err:
        raise AnnotationError(f"Cannot write {ANNOTATIONS_FILE} in the run folder ({err.strerror or err}): the "
                              f"runs folder is read-only here; start the viewer where it may write, or change "
                              f"the folder's permissions.") from err
