"""Starting and stopping ``nanogpt-run`` from the page, and nothing else.

What the page asks for is parsed by page_policy (named, typed fields; paths inside the allowed folders).
The runner's own check (``python -m nanogpt_runner.cli.check --json``) then composes the run as nanogpt-run
will (a resumed run takes its checkpoint's config) and answers with the config it would use; page_policy
checks that too and pins its data source, process count, single node and runs folder on the command
line, so a checkpoint's config cannot bring back what the page may not choose. Processes start with an
argument list (never a shell) in their own session: Stop signals that whole process group (nanogpt-run,
which tells every rank of its group), and only groups this viewer started. Every child (the check, the run,
its ranks) starts in the runs folder with ``PYTHONSAFEPATH=1`` (``-P``: a module planted in the current
folder is never imported) and, unless the operator allows it, offline for the Hugging Face hub. At most
``max_runs`` runs started here are alive at once.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nanogpt_runner.viewer.page_policy import LaunchError, PagePolicy, build_overrides, effective_problems

CHECK_TIMEOUT_S = 180
DEFAULT_MAX_RUNS = 2
OFFLINE_HUB = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


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
    return [sys.executable, "-P", "-m", "nanogpt_runner.cli.check", "--json"]


def child_env(hub_online: bool = False) -> dict[str, str]:
    """The environment of every process the page starts: safe import path (inherited by torchrun's ranks,
    which a console script's ``-P`` would not reach), and offline for the hub unless ``hub_online``."""
    return {**os.environ, "PYTHONSAFEPATH": "1", **({} if hub_online else OFFLINE_HUB)}


def private_temp_dir() -> Path:
    """This viewer's own ``nanogpt-view-*`` temp folder (launch logs, exported files), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="nanogpt-view-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@dataclass
class Launched:
    process: subprocess.Popen
    name: str
    overrides: list[str]
    log: Path
    started: float

    @property
    def state(self) -> str:
        code = self.process.poll()
        return "running" if code is None else ("finished" if code == 0 else f"exited with code {code}")

    def describe(self) -> str:
        started = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"pid {self.process.pid} · {self.name} · started {started} · {self.state}"


class Launcher:
    """Validates and starts nanogpt-run processes for one runs root, and stops the ones it started."""

    def __init__(self, root: Path, data_dirs: tuple[Path, ...] = (), runner: list[str] | None = None,
                 checker: list[str] | None = None, max_runs: int = DEFAULT_MAX_RUNS, hub_online: bool = False):
        self.policy = PagePolicy(Path(root), tuple(data_dirs))
        self.root = self.policy.runs_root
        self._runner = runner
        self.checker = checker or check_command()
        self.max_runs = max_runs
        self.env = child_env(hub_online)
        self.processes: dict[int, Launched] = {}
        self.log_dir = private_temp_dir()
        self._lock = threading.Lock()

    def check(self, overrides: list[str]) -> tuple[list[str], dict]:
        """The runner's own verdict: (problems, the config it would run with) — no problems when it would start."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)  # every child starts there (nanogpt-run would make it anyway)
            done = subprocess.run([*self.checker, *overrides], capture_output=True, text=True, cwd=self.root,
                                  env=self.env, timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            return [f"could not run the runner's check ({' '.join(self.checker)}): {err}"], {}
        if done.returncode == 0:
            try:
                effective = json.loads(done.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                return [f"the runner's check answered without the config it would run: {done.stdout[-300:]!r}"], {}
            return [], effective if isinstance(effective, dict) else {}
        text = (done.stderr.strip() or done.stdout.strip()).splitlines()
        if any("No module named nanogpt_runner.cli.check" in line for line in text):
            return ["this environment has no nanogpt_runner.cli.check, so the overrides cannot be validated: "
                    "update the project (pip install -e .)"], {}
        # The runner prints "error: invalid config:" and then one "  - problem" line each.
        problems = [line.strip().removeprefix("error:").strip().removeprefix("- ") for line in text]
        return [p for p in problems if p and not p.endswith(":")] or [
            f"the check failed with exit code {done.returncode}: {' '.join(text)[-500:] or 'no message'}"], {}

    def validate(self, overrides: list[str]) -> list[str]:
        """Every problem with these overrides, the runner's and the page's (empty when it would start)."""
        return self.plan(overrides)[0]

    def plan(self, overrides: list[str]) -> tuple[list[str], list[str]]:
        """(problems, the full argument list for nanogpt-run)."""
        problems, effective = self.check(overrides)
        if problems:
            return problems, []
        problems, pins = effective_problems(effective, self.policy)
        pinned_keys = {pin.split("=", 1)[0] for pin in pins}
        return problems, [o for o in overrides if o.split("=", 1)[0] not in pinned_keys] + pins

    def start(self, form: dict, extra: str = "") -> Launched:
        """Check, then start one run; raises LaunchError with every problem when it may not start."""
        overrides = build_overrides(form, extra, self.policy)
        runner = self._runner or runner_command()
        self._refuse_when_full()
        problems, arguments = self.plan(overrides)
        if problems:
            raise LaunchError("\n".join(problems))
        name = str(form.get("name") or "").strip() or "run"
        with self._lock:
            self._refuse_when_full()  # again: another click may have started one during the check
            log = self.log_dir / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{len(self.processes)}.log"
            with open(log, "wb") as out:
                # Its own session: Stop can signal the whole group (nanogpt-run, torchrun, every rank).
                process = subprocess.Popen([*runner, *arguments], stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                           env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
            launched = Launched(process, name, arguments, log, time.time())
            self.processes[process.pid] = launched
        return launched

    def _refuse_when_full(self) -> None:
        running = sum(launched.process.poll() is None for launched in self.processes.values())
        if running >= self.max_runs:
            raise LaunchError(f"{running} runs started from this page are still running, the most it starts at once "
                              f"(nanogpt-view --max-runs {self.max_runs}): stop one or wait for one to end")

    def stop(self, pid: int) -> str:
        """SIGTERM to the process group of a run this viewer started; anything else is refused."""
        launched = self.processes.get(pid)
        if launched is None:
            raise LaunchError(f"pid {pid} was not started by this viewer: only runs launched here can be stopped here")
        if launched.process.poll() is not None:
            return f"pid {pid} already ended ({launched.state})"
        try:
            os.killpg(launched.process.pid, signal.SIGTERM)  # the group id is the pid: it leads its session
        except ProcessLookupError:
            return f"pid {pid} already ended"
        return (f"sent SIGTERM to pid {pid} and its process group (nanogpt-run tells every rank): the run checkpoints "
                f"and is marked interrupted")

    def log_tail(self, pid: int, max_bytes: int = 4000) -> str:
        launched = self.processes.get(pid)
        if launched is None:
            return ""
        try:
            with open(launched.log, "rb") as f:
                f.seek(max(0, os.path.getsize(launched.log) - max_bytes))
                data = f.read(max_bytes)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")
