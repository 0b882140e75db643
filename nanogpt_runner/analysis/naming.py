"""Names that say what makes a run different: a sweep job is ``lr=3e-3 · accum=4``, not ``tiny``.

A sweep's jobs share a model name and differ only in the overrides Hydra gave each of them, so the
overrides that are not common to every job of the sweep are the job's name, each key shortened to its last
part (``optimizer.lr=3e-3`` -> ``lr=3e-3``; the seed always last). A single run keeps its folder's name.
Names are made unique over the runs named together. The viewer (table, selector, legends, analysis),
``nanogpt-report`` and the study card all call ``run_names``, so a run has one name everywhere; its
folder never changes. Overrides come from run.json, which anyone may have written: only strings count,
and a name is cut to MAX_NAME characters. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class RunRecord(Protocol):
    """What naming needs of a run (analysis.records.RunRecord has it; records imports this module)."""

    id: str
    info: dict
    display_name: str

    @property
    def sweep(self) -> str: ...

    @property
    def name(self) -> str: ...

SEPARATOR = " · "
MAX_NAME = 80
MAX_OVERRIDES = 64  # overrides of one run.json considered; a real sweep job has a handful
SHORT_KEYS = {"train.grad_accum": "accum", "parallel.nproc_per_node": "nproc", "train.batch_size": "batch",
              "model.n_layer": "layers", "model.n_embd": "width"}
SEED_KEYS = ("train.seed", "seed")


def overrides_of(record: RunRecord) -> list[str]:
    """The run's command-line overrides (run.json "overrides"), strings only."""
    found = record.info.get("overrides")
    return [o for o in found[:MAX_OVERRIDES] if isinstance(o, str)] if isinstance(found, list) else []


def override_key(override: str) -> str:
    """``+optimizer.lr=3e-3`` -> ``optimizer.lr`` (Hydra's +, ++ and ~ prefixes dropped)."""
    return override.partition("=")[0].lstrip("+~").strip()


def short_key(key: str) -> str:
    return SHORT_KEYS.get(key, key.rsplit(".", 1)[-1])


def swept_overrides(jobs: list[RunRecord]) -> list[str]:
    """The override keys that are not the same in every job, in the order they first appear, the seed last."""
    lists = [overrides_of(job) for job in jobs]
    common = set.intersection(*(set(o) for o in lists)) if lists else set()
    keys = list(dict.fromkeys(override_key(o) for own in lists for o in own if o not in common))
    return sorted(keys, key=lambda k: k in SEED_KEYS)


def run_names(records: list[RunRecord]) -> dict[str, str]:
    """Run id -> the name to show: a sweep job by its own overrides, any other run by its folder's name;
    a name two runs share gets its sweep's folder (then its job folder) added."""
    sweeps: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.sweep:
            sweeps.setdefault(record.sweep, []).append(record)
    names = {record.id: Path(record.id).name for record in records if not record.sweep}
    for jobs in sweeps.values():
        names.update(_job_names(jobs))
    count: dict[str, int] = {}
    for name in names.values():
        count[name] = count.get(name, 0) + 1
    for record in records:
        if count[names[record.id]] > 1 and record.sweep:
            names[record.id] = _cut(f"{names[record.id]} ({Path(record.id).parent.name}/{Path(record.id).name})")
    return names


def _job_names(jobs: list[RunRecord]) -> dict[str, str]:
    keys = swept_overrides(jobs)
    shorts = [short_key(k) for k in keys]
    shown = {k: (s if shorts.count(s) == 1 else k) for k, s in zip(keys, shorts, strict=True)}
    names = {}
    for job in jobs:
        values = {override_key(o): o.partition("=")[2] for o in overrides_of(job)}
        parts = [f"{shown[k]}={values[k]}" for k in keys if k in values]
        names[job.id] = _cut(SEPARATOR.join(parts) if parts else job.name)
    return names


def _cut(name: str) -> str:
    name = "".join(ch if ch.isprintable() else " " for ch in name)
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 1] + "…"


def name_runs(records: list[RunRecord]) -> list[RunRecord]:
    """Give each record its ``display_name`` (see ``run_names``); returns the records whose name changed."""
    names = run_names(records)
    changed = [r for r in records if r.display_name != names[r.id]]
    for record in changed:
        record.display_name = names[record.id]
    return changed
