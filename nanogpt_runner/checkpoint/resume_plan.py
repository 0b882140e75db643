"""Planning a resume, in the launcher, before anything is imported that a config check does not need (torch).

Before a run directory is chosen, ``plan_resume`` decides whether this launch continues a run, in which
directory, and with which config: this launch's, with what defines the training taken from the checkpoint
(config.saved.RESUMED) where the command line does not name it, refusing changes to FIXED_FIELDS and to the
global batch. A saved config is data: never interpolated, and never the source of a destination. It reads
the checkpoint's meta.json only (checkpoint.folder), never its tensors, so a config mistake is refused
before torch loads. Inside the training process, checkpoint.checkpointer restores the checkpoint and checks
the same rules again (``config_changes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nanogpt_runner.checkpoint.folder import checkpoint_dir, find_latest, resolve
from nanogpt_runner.config.saved import resumed_part
from nanogpt_runner.config.schema import Config, dp_degree, flatten
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.fsutil import UnsafeFolder, refuse_symlinks
from nanogpt_runner.runs.rundir import CHECKPOINT_DIR, read_run

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
    "model.activation": "architecture comes from the checkpoint",
    "optimizer.name": "the optimizer state in the checkpoint is that optimizer's",
    "data.name": "the vocabulary and the data come from the checkpoint's run",
    "data.val_fraction": "it moves the train/val split the run was trained and evaluated on",
    "train.seed": "it changes which data every step trains on",
}
# Fields that never count as a change of the run (where it resumes from is the point of resuming).
IGNORED_FIELDS = {"resume"}
# Where this launch's processes meet: always this command line's, never a checkpoint's. torchrun's
# rendezvous store unpickles what it is sent, so a checkpoint copied from someone must not pick the address.
LOCAL_FIELDS = ("parallel.nnodes", "parallel.rdzv_endpoint", "parallel.rdzv_id")


def config_changes(saved: dict, current: dict) -> tuple[dict[str, list], list[str]]:
    """(allowed changes as {field: [saved, now]}, one refusal sentence per fixed field that differs): of the
    fields that define the training (config.saved.RESUMED); where this launch writes is no change of the run."""
    old, new = flatten(resumed_part(saved)), flatten(resumed_part(current))
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


def override_paths(overrides: list[str], conf_dir: Path) -> list[str]:
    """The config paths a user's command-line overrides set: ``train.max_iters=9`` sets train.max_iters,
    ``model=small`` the whole model section, ``+experiment=x`` everything that preset sets.

    What the user typed wins over what a checkpoint or pretrained weights bring: a resume keeps these
    paths from the command line (the rest from the checkpoint's config), and ``model.init_from`` checks
    them against the weights' architecture (pretrained.apply_init_from)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
        previous = (read_run(self.run_dir) or {}).get("resumes", [])
        entry = {"time": time.time(), "step": self.step, "checkpoint": str(self.checkpoint), "changes": self.changes}
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "resumes": [*previous, entry]}


def resumed_config(cfg: Config, saved: dict, typed: list[str], checkpoint: Path):
    """The config a resume trains with: this launch's (command line and defaults), with the checkpoint's
    RESUMED fields (config.saved) laid over it, except the paths the command line names (``typed``).

    Nothing else of the saved config is used: every destination, process count and side channel comes from
    this launch, and LOCAL_FIELDS (where its processes meet) are never RESUMED."""
    def typed_here(path: str) -> bool:
        return any(path == t or path.startswith(f"{t}.") or t.startswith(f"{path}.") for t in typed)

    kept = {path: value for path, value in flatten(resumed_part(saved)).items()
            if not typed_here(path) and not isinstance(value, dict)}
    effective = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, resolve=True))
    try:
        for path, value in kept.items():
            OmegaConf.update(effective, path, value, merge=False)
    except (OmegaConfBaseException, ValueError) as err:
        raise CheckpointError(f"cannot resume from {checkpoint}: its saved config has an invalid value "
                              f"({str(err).splitlines()[0]}); start a new run instead") from err
    return effective


def plan_resume(cfg: Config, run_dir: Path, overrides: list[str], conf_dir: Path,
                announce: Callable[[str], None] = print) -> ResumePlan | None:
    """Decide whether this launch continues a run, and with which config; None for a fresh run.

    ``resume=PATH`` continues the run that PATH (a run directory or a checkpoint folder) belongs to, in
    place. Otherwise ``train.resume=auto`` continues ``run_dir`` when it already has checkpoints (the user
    passed hydra.run.dir=THAT_DIR). The run folder must hold no symlink (it is written through), and the
    config is ``resumed_config``'s; a change to a FIXED_FIELDS entry is refused with CheckpointError."""
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

    try:
        refuse_symlinks(target_dir)
    except UnsafeFolder as err:
        raise CheckpointError(f"cannot resume {target_dir}: {err}") from err
    effective = resumed_config(cfg, meta["config"], override_paths(overrides, conf_dir), checkpoint)
    changes, problems = config_changes(meta["config"], OmegaConf.to_container(effective, resolve=True))
    if problems:
        raise CheckpointError(f"cannot resume from {checkpoint}: " + "; ".join(problems))
    if meta["step"] >= effective.train.max_iters:
        raise CheckpointError(
            f"nothing to train: {checkpoint} is at step {meta['step']} and "
            f"train.max_iters={effective.train.max_iters}; raise train.max_iters to continue the run")
    effective.resume = str(checkpoint.resolve())
    return ResumePlan(target_dir.resolve(), checkpoint.resolve(), meta["step"], effective, changes)
