"""What the page may start: an allowlist of named, typed fields, and where its paths may point.

The page is an untrusted client (anyone who can reach it, or a web page that rebinds its address), so
every value comes in as a named field (the form's, or one of FREE_TEXT_FIELDS) and is parsed by that
field's type and range; the overrides are then written here, from the parsed values: no key the tables
do not name, no Hydra options or settings, no ``+``, ``++`` or ``~``, no interpolation or control
character reaches the runner, because no raw text does (``quoted`` refuses what Hydra would interpret
even inside quotes). Paths (``resume=``, ``data.path=``) are resolved here, as absolute paths after
symlinks, and must lie in the runs folder or in a data folder the operator named with ``--data-dir``.
``effective_problems`` applies the same rules to the config the runner reports it would use (a resumed
run's comes from its checkpoint) and returns the overrides that pin it.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nanogpt_runner.config.schema import (
    ATTENTION_IMPLEMENTATIONS,
    BACKENDS,
    CONF_DIR,
    DP_MODES,
    NAN_POLICIES,
    PP_SCHEDULES,
    PRECISIONS,
    RUN_NAME,
    TINY_SHAKESPEARE_URL,
    available_cores,
)

TOKEN = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)=(.*)$", re.DOTALL)
MAX_DATA_FILES = 10_000  # a data folder is checked entry by entry (symlinks out of the allowed folders)
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver sees (the viewer never imports torch)


class LaunchError(ValueError):
    """A request the viewer refuses; the message says why and what to do instead."""


@dataclass(frozen=True)
class Field:
    """One value the page may set: the config key (or config group) it becomes, and how it is parsed.

    ``kind`` is int, float, bool, choice, name, group (a preset of conf/<key>/), runs_path or data_path."""

    key: str
    kind: str
    low: float = 0
    high: float = math.inf
    choices: tuple[str, ...] = ()
    low_open: bool = False  # True: ``low`` itself is refused (a learning rate of 0)
    high_open: bool = False


def _int(key: str, low: int = 1, high: int = 10**9) -> Field:
    return Field(key, "int", low, high)


def _float(key: str, low: float = 0.0, high: float = math.inf, low_open: bool = False,
           high_open: bool = False) -> Field:
    return Field(key, "float", low, high, low_open=low_open, high_open=high_open)


# The form's fields, by the names the page sends: each is parsed by its type and range.
FORM_FIELDS: dict[str, Field] = {
    "model": Field("model", "group"),
    "n_layer": _int("model.n_layer", 1, 256),
    "n_head": _int("model.n_head", 1, 256),
    "n_embd": _int("model.n_embd", 1, 16384),
    "block_size": _int("model.block_size", 1, 65536),
    "dropout": _float("model.dropout", 0.0, 1.0, high_open=True),
    "lr": _float("optimizer.lr", 0.0, 10.0, low_open=True),
    "batch_size": _int("train.batch_size", 1, 65536),
    "grad_accum": _int("train.grad_accum", 1, 4096),
    "max_iters": _int("train.max_iters"),
    "precision": Field("train.precision", "choice", choices=PRECISIONS),
    "recompute": Field("train.recompute", "bool"),
    "compile": Field("train.compile", "bool"),
    "parallel": Field("parallel", "group"),
    "nproc": _int("parallel.nproc_per_node", 1, 64),
    "name": Field("run.name", "name"),
}
# What the free-text box accepts besides the form's config keys (key=value; the README lists them).
FREE_TEXT_FIELDS: dict[str, Field] = {
    "experiment": Field("experiment", "group"),
    "data": Field("data", "group"),
    "data.path": Field("data.path", "data_path"),
    "data.val_fraction": _float("data.val_fraction", 0.0, 1.0, True, True),
    "resume": Field("resume", "runs_path"),
    "model.attention": Field("model.attention", "choice", choices=ATTENTION_IMPLEMENTATIONS),
    "optimizer.min_lr": _float("optimizer.min_lr", 0.0, 10.0),
    "optimizer.warmup_iters": _int("optimizer.warmup_iters", 0),
    "optimizer.weight_decay": _float("optimizer.weight_decay", 0.0, 10.0),
    "train.eval_interval": _int("train.eval_interval"),
    "train.eval_iters": _int("train.eval_iters", 1, 100_000),
    "train.log_interval": _int("train.log_interval"),
    "train.grad_clip": _float("train.grad_clip", 0.0, 1e6),
    "train.seed": _int("train.seed", 0, 2**31 - 1),
    "train.ckpt_interval": _int("train.ckpt_interval", 0),
    "train.keep_last": _int("train.keep_last", 1, 1000),
    "train.nan_policy": Field("train.nan_policy", "choice", choices=NAN_POLICIES),
    "parallel.dp": Field("parallel.dp", "choice", choices=DP_MODES),
    "parallel.tp": _int("parallel.tp", 1, 64),
    "parallel.pp": _int("parallel.pp", 1, 64),
    "parallel.pp_schedule": Field("parallel.pp_schedule", "choice", choices=PP_SCHEDULES),
    "parallel.microbatches": _int("parallel.microbatches", 1, 4096),
    "parallel.backend": Field("parallel.backend", "choice", choices=BACKENDS),
}
FIELDS = FORM_FIELDS | FREE_TEXT_FIELDS
# The free-text box names fields by their config key (model.n_layer=4, +experiment written experiment=).
BY_KEY = {field.key: name for name, field in FIELDS.items()}


def presets(group: str) -> list[str]:
    """The names of a config group's presets (conf/<group>/*.yaml), for the form's drop-downs."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def built_in_urls() -> set[str]:
    """The download addresses the runner's own data presets name: the only sources a page-started run uses."""
    from omegaconf import OmegaConf

    urls = {TINY_SHAKESPEARE_URL}
    for preset in (CONF_DIR / "data").glob("*.yaml"):
        url = OmegaConf.load(preset).get("url")
        if isinstance(url, str):
            urls.add(url)
    return urls


def visible_gpus() -> int:
    """The NVIDIA GPUs this process may use (``CUDA_VISIBLE_DEVICES`` narrows them), read without torch."""
    try:
        found = len(list(NVIDIA_GPUS.iterdir()))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return found if visible is None else min(found, len([d for d in visible.split(",") if d.strip()]))


@dataclass
class PagePolicy:
    """Where the page's paths may point (the runs folder, and the data folders the operator named), and how
    many processes a run may have on this machine (one per GPU, or per CPU core for a CPU run)."""

    runs_root: Path
    data_dirs: tuple[Path, ...] = ()
    cores: int = field(default_factory=available_cores)
    gpus: int = field(default_factory=visible_gpus)

    def __post_init__(self):
        self.runs_root = Path(self.runs_root).resolve()
        self.data_dirs = tuple(Path(d).resolve() for d in self.data_dirs)

    def parse(self, name: str, raw) -> str:
        """The override for page field ``name`` set to ``raw``; LaunchError when the value is refused."""
        field = FIELDS[name]
        text = raw.strip() if isinstance(raw, str) else raw
        label = f"{field.key}={text!r}" if isinstance(text, str) else f"{field.key}={text}"
        if field.kind == "bool":
            if isinstance(text, bool) or text in ("true", "false"):
                return f"{field.key}={str(text).lower()}"
            raise LaunchError(f"{label}: use true or false")
        if not isinstance(text, (str, int, float)) or isinstance(text, bool):
            raise LaunchError(f"{label}: not a value the page accepts")
        text = str(text)
        if field.kind == "int":
            return f"{field.key}={_parse_int(text, field, label)}"
        if field.kind == "float":
            return f"{field.key}={_parse_float(text, field, label)!r}"
        if field.kind in ("choice", "group"):
            choices = field.choices or tuple(presets(field.key))
            if text not in choices:
                raise LaunchError(f"{label}: use one of {', '.join(choices)}")
            return f"+experiment={text}" if field.key == "experiment" else f"{field.key}={text}"
        if field.kind == "name":
            if not RUN_NAME.match(text):
                raise LaunchError(f"run name {text!r}: use 1-64 letters, digits, '.', '_' or '-'")
            return f"{field.key}={quoted(text)}"  # quoted: a name such as 1e3 or null stays that name
        if field.kind == "runs_path":
            return f"{field.key}={quoted(self.runs_path(text, label))}"
        return f"{field.key}={quoted(self.data_path(text, label))}"

    def runs_path(self, text: str, label: str) -> Path:
        """A path in the runs folder (relative ones taken from it), resolved as the runner will open it."""
        path = self._resolve(text, self.runs_root)
        if not path.is_relative_to(self.runs_root):
            raise LaunchError(f"{label}: the page resumes only runs inside the runs folder {self.runs_root}")
        return path

    def data_path(self, text: str, label: str) -> Path:
        """A data file or folder inside a --data-dir folder (relative paths taken from the first)."""
        if not self.data_dirs:
            raise LaunchError(f"{label}: this viewer trains only on the built-in corpora; start it with "
                              f"--data-dir FOLDER to allow data from that folder")
        path = self._resolve(text, self.data_dirs[0])
        if not self.in_data_dirs(path):
            raise LaunchError(f"{label} is outside the data folders {', '.join(map(str, self.data_dirs))}: use a "
                              f"file in one of them (or start the viewer with --data-dir for another folder)")
        if path.is_dir():
            outside = next((p for p in _folder_entries(path) if not self.in_data_dirs(p.resolve())), None)
            if outside is not None:
                raise LaunchError(f"{label}: {outside} leads outside the data folders (a symlink); remove it")
        return path

    def in_data_dirs(self, path: Path) -> bool:
        return any(path.is_relative_to(d) for d in self.data_dirs)

    def ranks_problem(self, nproc: int, device: str | None) -> str | None:
        """Why ``nproc`` processes are too many for one run on this machine; None when they fit."""
        on_gpus = self.gpus > 0 and device != "cpu"
        limit = self.gpus if on_gpus else self.cores
        if nproc <= limit:
            return None
        have = f"{self.gpus} GPU(s)" if on_gpus else f"{self.cores} CPU core(s) and no GPU in use"
        return (f"parallel.nproc_per_node={nproc}: this machine has {have}, so a run started from the page has at "
                f"most {limit} processes: use parallel.nproc_per_node={limit} or fewer (or start it from a shell)")

    @staticmethod
    def _resolve(text: str, base: Path) -> Path:
        return (base / Path(text).expanduser()).resolve()


def quoted(value: str | Path) -> str:
    """``value`` as a single-quoted Hydra override value. Inside quotes Hydra still gives ``'``, ``\\`` and
    ``${`` a meaning, so a value holding any of them (or a control character) is refused, not escaped."""
    text = str(value)
    if any(ch in text for ch in "'\\$") or not text.isprintable():
        raise LaunchError(f"{text!r} holds a quote, a backslash, a $ or a control character, which the page never "
                          f"passes to the runner: rename it, or start the run from a shell")
    return f"'{text}'"


def _parse_int(text: str, field: Field, label: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", text) or not field.low <= int(text) <= field.high:
        raise LaunchError(f"{label}: use a whole number from {int(field.low)} to {int(field.high)}")
    return int(text)


def _parse_float(text: str, field: Field, label: str) -> float:
    if not re.fullmatch(r"[0-9]*\.?[0-9]+(e-?[0-9]{1,3})?|[0-9]+\.", text, re.IGNORECASE):
        raise LaunchError(f"{label}: a number is needed, e.g. 0.1 or 3e-4")
    value = float(text)
    too_low = value <= field.low if field.low_open else value < field.low
    too_high = value >= field.high if field.high_open else value > field.high
    if too_low or too_high:
        interval = f"{'(' if field.low_open else '['}{field.low:g}, {field.high:g}{')' if field.high_open else ']'}"
        raise LaunchError(f"{label}: use a number in {interval}")
    return value


def _folder_entries(folder: Path) -> list[Path]:
    """Every entry under ``folder`` (symlinked folders listed, not entered); LaunchError past MAX_DATA_FILES,
    since an entry left unchecked could be a link out of the data folders."""
    entries = []
    for current, dirs, files in os.walk(folder):
        entries += [Path(current) / name for name in dirs + files]
        if len(entries) > MAX_DATA_FILES:
            raise LaunchError(f"data.path={str(folder)!r} holds more than {MAX_DATA_FILES:,} files and folders, "
                              f"more than the page checks: train on it from a shell")
    return entries


def parse_extra(text: str) -> list[tuple[str, str]]:
    """Free-text ``key=value`` words (split like a shell splits words, quotes allowed; never run by one)
    as (page field name, value) pairs. Raises LaunchError naming every word that is not one."""
    try:
        words = shlex.split(text or "")
    except ValueError as err:
        raise LaunchError(f"extra overrides: {err} (check the quotes)") from err
    pairs, problems = [], []
    for word in words:
        match = TOKEN.match(word)
        name = BY_KEY.get(match.group(1)) if match else None
        if name is None:
            problems.append(f"{word!r} is not a setting the page may change: besides the form it accepts key=value "
                            f"for {', '.join(FREE_TEXT_FIELDS)} (start the runner from a shell for anything else)")
        else:
            pairs.append((name, match.group(2)))
    if problems:
        raise LaunchError("\n".join(problems))
    return pairs


def form_values(form: dict) -> list[tuple[str, object]]:
    """The form's filled-in fields as (field, value), in form order; checkboxes only when ticked."""
    pairs = []
    for name in FORM_FIELDS:
        value = form.get(name)
        if value is None or value is False or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, float) and value.is_integer() and FIELDS[name].kind == "int":
            value = int(value)
        pairs.append((name, value))
    return pairs


def build_overrides(form: dict, extra: str, policy: PagePolicy) -> list[str]:
    """The overrides the page asks for, each parsed by its field (form first, then the free text), then
    the viewer's own. Raises LaunchError listing every refused value."""
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise LaunchError(f"the form has no field {', '.join(unknown)}")
    pairs = form_values(form) + parse_extra(extra)
    overrides, problems, seen = [], [], set()
    for name, value in pairs:
        if name in seen:
            problems.append(f"{FIELDS[name].key} is set twice: keep one")
            continue
        seen.add(name)
        try:
            overrides.append(policy.parse(name, value))
        except LaunchError as err:
            problems.append(str(err))
    if problems:
        raise LaunchError("\n".join(problems))
    return overrides + pinned_overrides(policy)


def pinned_overrides(policy: PagePolicy) -> list[str]:
    """What a page-started run never chooses: its runs folder, one node without a rendezvous (torchrun's
    store unpickles what it is sent), the default data cache, no progress bar."""
    return [f"run.root={quoted(policy.runs_root)}", "run.progress=false", "parallel.nnodes=1",
            "parallel.rdzv_endpoint=null", "data.cache_dir=null"]


def effective_problems(effective: dict, policy: PagePolicy) -> tuple[list[str], list[str]]:
    """(problems, pins) for the config the runner will use (after a resume took its checkpoint's): the data
    source must be a built-in one or lie in a data folder, weights to start from in the runs or data
    folders, the process count in the page's range and within this machine's cores or GPUs. The pins fix
    those values on the command line, so the run uses what was checked here."""
    data, parallel = effective.get("data") or {}, effective.get("parallel") or {}
    problems, pins = [], []
    url = data.get("url")
    if url is not None and url not in built_in_urls():
        problems.append(f"data.url={url!r} is not a built-in corpus: a run started from the page downloads only "
                        f"the built-in corpora (resume that run from a shell)")
    elif url is not None:
        pins.append(f"data.url={quoted(url)}")
    path = data.get("path")
    if path is None:
        pins.append("data.path=null")
    else:
        try:
            pins.append(f"data.path={quoted(policy.data_path(str(path), f'data.path={path!r}'))}")
        except LaunchError as err:
            problems.append(str(err))
    try:
        pins.append(policy.parse("nproc", str(parallel.get("nproc_per_node"))))
        too_many = policy.ranks_problem(int(parallel["nproc_per_node"]), (effective.get("train") or {}).get("device"))
        problems += [too_many] if too_many else []
    except LaunchError as err:
        problems.append(str(err))
    init_from = (effective.get("model") or {}).get("init_from")
    weights = policy.runs_root / Path(init_from).expanduser() if isinstance(init_from, str) else None
    if weights is not None and ("/" in init_from or weights.exists()):  # a path, not a model name
        weights = weights.resolve()  # the runner starts in the runs folder (launcher)
        if weights.is_relative_to(policy.runs_root) or policy.in_data_dirs(weights):
            pins.append(f"model.init_from={quoted(weights)}")
        else:
            problems.append(f"model.init_from={init_from!r} is outside the runs folder and the data folders: "
                            f"start that run from a shell")
    return problems + _nanogpt_resume_problems(effective.get("resume"), policy), pins


def _nanogpt_resume_problems(resume: object, policy: PagePolicy) -> list[str]:
    """A nanoGPT out_dir resumed from the page (its folder is inside the runs folder, runs_path saw to that) must
    not reach out of it through a ckpt.pt that is a symlink, as a run of this runner refuses any symlink."""
    if not isinstance(resume, str):
        return []
    checkpoint = Path(resume) / "ckpt.pt"  # nanoGPT's file name (weights.nanogpt_resume.CKPT)
    if checkpoint.exists() and not checkpoint.resolve().is_relative_to(policy.runs_root):
        return [f"resume={resume!r}: its ckpt.pt points outside the runs folder {policy.runs_root}; copy the file "
                f"there, or start that run from a shell"]
    return []
