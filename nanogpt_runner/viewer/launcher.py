"""Starting and stopping ``nanogpt-run`` from the page, and nothing else.

The page sends form values and free-text overrides. They become Hydra ``key=value`` overrides; each one
is checked here (no options, no Hydra settings, no interpolations, no run root other than the
viewer's), then the whole set by the runner's own validation (``python -m nanogpt_runner.check``),
and only then started, as an argument list (never a shell string). Stop sends SIGTERM to a process
this viewer started, and only to those: the runner checkpoints and marks the run interrupted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHECK_TIMEOUT_S = 180
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# A Hydra override the page may pass: an optional + or ++, a dotted key or group, "=", a value.
OVERRIDE = re.compile(r"^(\+{0,2})([A-Za-z_][A-Za-z0-9_]*(?:[./][A-Za-z0-9_]+)*)=(.*)$", re.DOTALL)
# Keys the viewer decides: Hydra's own (launcher, sweeper, run dir), where runs go, where data is written.
FORBIDDEN_KEYS = ("run.root", "data.cache_dir")
INSIDE_ROOT_KEYS = ("resume",)  # path values that must point into the runs root
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Form field -> config key. Empty fields are left out: the preset's value stands.
FORM_KEYS = {
    "model": "model", "n_layer": "model.n_layer", "n_head": "model.n_head", "n_embd": "model.n_embd",
    "block_size": "model.block_size", "dropout": "model.dropout", "lr": "optimizer.lr",
    "batch_size": "train.batch_size", "grad_accum": "train.grad_accum", "max_iters": "train.max_iters",
    "precision": "train.precision", "recompute": "train.recompute", "compile": "train.compile",
    "parallel": "parallel", "nproc": "parallel.nproc_per_node", "name": "run.name",
}


class LaunchError(ValueError):
    """A request the viewer refuses; the message says why and what to do instead."""


def override_problem(token: str, root: Path) -> str | None:
    """Why ``token`` may not be passed to nanogpt-run from the page, or None when it may."""
    match = OVERRIDE.match(token)
    if token.startswith("-") or match is None:
        return (f"{token!r} is not a key=value override: the page starts single runs with overrides such as "
                f"optimizer.lr=3e-4 (no options, no -m sweeps)")
    key, value = match.group(2), match.group(3)
    if re.split(r"[./]", key)[0] == "hydra" or key in FORBIDDEN_KEYS:
        return (f"{token!r} sets {key}, which the viewer decides: runs go under its runs folder with Hydra's "
                f"settings from conf/ (start the runner from a shell for anything else)")
    if "${" in value or "\n" in value or "\x00" in value:
        return f"{token!r}: interpolations (${{...}}) and control characters are not accepted from the page"
    if key in INSIDE_ROOT_KEYS and value not in ("null", "") and not inside(root, Path(value)):
        return f"{token!r}: {key} must point inside the runs folder {root}"
    return None


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (relative paths taken from ``root``) resolves to a place under ``root``."""
    root = Path(root).resolve()
    return (root / path).resolve().is_relative_to(root)


def form_overrides(form: dict) -> list[str]:
    """The form's filled-in fields as overrides, in form order; checkboxes only when ticked."""
    out = []
    for field, key in FORM_KEYS.items():
        value = form.get(field)
        value = value.strip() if isinstance(value, str) else value
        if value is None or value == "" or value is False:
            continue
        if isinstance(value, float) and value.is_integer() and key not in ("model.dropout", "optimizer.lr"):
            value = int(value)
        out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def parse_extra(text: str) -> list[str]:
    """Free-text overrides, split like a shell would split words (quotes allowed), never run by one."""
    try:
        return shlex.split(text or "")
    except ValueError as err:
        raise LaunchError(f"extra overrides: {err} (check the quotes)") from err


def build_overrides(form: dict, extra: str, root: Path) -> list[str]:
    """Form + extra overrides, each checked, then the viewer's own: the runs root, no progress bar."""
    tokens = form_overrides(form) + parse_extra(extra)
    problems = [p for p in (override_problem(t, root) for t in tokens) if p]
    name = form.get("name")
    if name and not NAME.match(str(name)):
        problems.append(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if problems:
        raise LaunchError("\n".join(problems))
    return tokens + [f"run.root={root}", "run.progress=false"]


def presets(group: str) -> list[str]:
    """The names of a config group's presets (conf/<group>/*.yaml), for the form's drop-downs."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def installed_script(name: str) -> str | None:
    """A console script of this project from this interpreter's environment (so viewer and runner match)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def runner_command() -> list[str]:
    found = installed_script("nanogpt-run")
    if not found:
        raise LaunchError("nanogpt-run is not installed in this Python environment: run pip install -e . in the "
                          "project, or start runs from a shell")
    return [found]


def check_command() -> list[str]:
    return [sys.executable, "-m", "nanogpt_runner.check"]


@dataclass
class Launched:
    process: subprocess.Popen
    overrides: list[str]
    log: Path
    started: float

    @property
    def state(self) -> str:
        code = self.process.poll()
        return "running" if code is None else ("finished" if code == 0 else f"exited with code {code}")

    def describe(self) -> str:
        name = next((o.split("=", 1)[1] for o in self.overrides if o.startswith("run.name=")), "run")
        started = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"pid {self.process.pid} · {name} · started {started} · {self.state}"


class Launcher:
    """Validates and starts nanogpt-run processes for one runs root, and stops the ones it started."""

    def __init__(self, root: Path, runner: list[str] | None = None, checker: list[str] | None = None):
        self.root = Path(root).resolve()
        self._runner = runner
        self.checker = checker or check_command()
        self.processes: dict[int, Launched] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix="nanogpt-view-"))
        self._lock = threading.Lock()

    def validate(self, overrides: list[str]) -> list[str]:
        """The runner's own verdict on these overrides: an empty list when it would start."""
        try:
            done = subprocess.run([*self.checker, *overrides], capture_output=True, text=True,
                                  timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            return [f"could not run the runner's check ({' '.join(self.checker)}): {err}"]
        if done.returncode == 0:
            return []
        text = (done.stderr.strip() or done.stdout.strip()).splitlines()
        if any("No module named nanogpt_runner.check" in line for line in text):
            return ["this environment has no nanogpt_runner.check, so the overrides cannot be validated: "
                    "update the project (pip install -e .)"]
        # The runner prints "error: invalid config:" and then one "  - problem" line each.
        problems = [line.strip().removeprefix("error:").strip().removeprefix("- ") for line in text]
        return [p for p in problems if p and not p.endswith(":")] or [
            f"the check failed with exit code {done.returncode}: {' '.join(text)[-500:] or 'no message'}"]

    def start(self, form: dict, extra: str = "") -> Launched:
        """Check, then start one run; raises LaunchError with every problem when it may not start."""
        overrides = build_overrides(form, extra, self.root)
        runner = self._runner or runner_command()
        problems = self.validate(overrides)
        if problems:
            raise LaunchError("\n".join(problems))
        with self._lock:
            log = self.log_dir / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{len(self.processes)}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen([*runner, *overrides], stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            launched = Launched(process, overrides, log, time.time())
            self.processes[process.pid] = launched
        return launched

    def stop(self, pid: int) -> str:
        """SIGTERM to a process this viewer started; anything else is refused."""
        launched = self.processes.get(pid)
        if launched is None:
            raise LaunchError(f"pid {pid} was not started by this viewer: only runs launched here can be stopped here")
        if launched.process.poll() is not None:
            return f"pid {pid} already ended ({launched.state})"
        launched.process.send_signal(signal.SIGTERM)
        return f"sent SIGTERM to pid {pid}: the run checkpoints and is marked interrupted"

    def log_tail(self, pid: int, max_bytes: int = 4000) -> str:
        launched = self.processes.get(pid)
        if launched is None:
            return ""
        try:
            data = launched.log.read_bytes()[-max_bytes:]
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")
