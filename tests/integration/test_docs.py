"""The docs are held to the code.

The README is the user's manual, so its commands must work as written: every ``nanogpt-run`` and
``nanogpt-plan`` command in it composes and passes the config's checks (each job of a sweep), each
refusal it shows is the refusal the runner gives, word for word, and the other programs' command lines
are accepted by their parsers. A renamed field or flag, a removed preset or a reworded message fails
here rather than in a user's terminal. docs/ARCHITECTURE.md names every module.
"""

from __future__ import annotations

import itertools
import re
import shlex
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import submitit
from hydra.core.override_parser.overrides_parser import OverridesParser

from nanogpt_runner.analysis import report
from nanogpt_runner.cli import export_logs
from nanogpt_runner.config.validate import validate
from nanogpt_runner.launch.app import check, compose_overrides
from nanogpt_runner.launch.torchrun import fill_cluster_rendezvous
from nanogpt_runner.viewer import app
from nanogpt_runner.weights import export, sample

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_PROGRAMS = ("nanogpt-run", "nanogpt-plan")
# The other programs' own command-line parsers: each refuses a line it cannot take (argparse's SystemExit,
# SampleError) before it looks at any file.
COMMAND_LINE_PARSERS = {
    "nanogpt-sample": sample.parse_args,
    "nanogpt-view": app.argument_parser().parse_args,
    "nanogpt-report": report.argument_parser().parse_args,
    "nanogpt-export": export.argument_parser().parse_args,
    "nanogpt-export-logs": export_logs.argument_parser().parse_args,
}
# Flags of nanogpt-run and nanogpt-plan that are not config overrides (with how many values each takes).
FLAGS = {"-m": 0, "--multirun": 0, "--help": 0, "--cfg": 1, "--estimate-only": 0}


def program(command: str) -> str:
    return command.split(" ", 1)[0]


def readme_examples() -> list[tuple[str, list[str]]]:
    """(command as written, the output the README shows under it) for each command of a ```bash or
    ```console block, its continuation lines joined."""
    examples = []
    for block in re.findall(r"```(?:bash|console)\n(.*?)```", README.read_text(), re.S):
        lines = textwrap.dedent(block).replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            command = line.removeprefix("$ ").strip()
            if program(command) not in (*CONFIG_PROGRAMS, *COMMAND_LINE_PARSERS):
                continue
            output = list(itertools.takewhile(lambda text: not text.startswith("$ "), lines[i + 1:]))
            examples.append((command, output))
    return examples


def arguments_of(command: str) -> list[str]:
    """A README command's arguments as the shell passes them: its program and comment left out."""
    return shlex.split(command, comments=True)[1:]


def overrides_of(command: str) -> list[str]:
    """The config overrides of a README command: its program, flags and comment left out."""
    words = arguments_of(command)
    overrides, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
        elif word in FLAGS:
            skip = FLAGS[word]
        else:
            overrides.append(word)
    return overrides


def jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of the jobs a sweep of ``overrides`` runs: every combination of the choice and
    range sweeps. Interval sweeps (Optuna's search space, ``interval(a, b)``) are left to the sweeper."""
    fixed, sweeps = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.input_line.split("=", 1)[0]
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif not override.is_interval_sweep():
            sweeps.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [fixed + list(combination) for combination in itertools.product(*sweeps)]


def refusal_shown(output: list[str]) -> list[str]:
    """The problems of an ``error: invalid config:`` the README shows, one string each."""
    if not output or output[0] != "error: invalid config:":
        return []
    return [line.strip().removeprefix("- ") for line in output[1:] if line.strip()]


EXAMPLES = readme_examples()
CONFIG_EXAMPLES = [(command, output) for command, output in EXAMPLES if program(command) in CONFIG_PROGRAMS]
OTHER_COMMANDS = [command for command, _ in EXAMPLES if program(command) not in CONFIG_PROGRAMS]
RUNS = [command for command, output in CONFIG_EXAMPLES if not refusal_shown(output)]
REFUSALS = [(command, refusal_shown(output)) for command, output in CONFIG_EXAMPLES
            # the memory refusal's figures are the RAM of the machine it was shown on: test_memory holds it
            if refusal_shown(output) and "available RAM" not in output[-1]]


def test_the_readme_is_read_as_expected():
    """The parsing above finds the README's commands, so the tests below cannot pass by finding none."""
    assert len(RUNS) > 40
    assert len(REFUSALS) == 2
    assert any(" -m " in command for command in RUNS)
    assert max(len(jobs(overrides_of(command))) for command in RUNS) >= 4
    assert {program(command) for command in OTHER_COMMANDS} == set(COMMAND_LINE_PARSERS)


@pytest.fixture
def users_machine(tmp_path, monkeypatch, corpus_path):
    """What the README's commands take as the user's own: a working directory holding the data files they
    name (created on demand by the returned function), and, for the cluster commands, a SLURM job."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: types.SimpleNamespace(hostnames=["node-a"], job_id="7"))

    def provide_data(cfg) -> None:
        path = Path(cfg.data.path or "")
        if not cfg.data.path or path.exists():
            return
        if cfg.data.name == "bin":  # a folder nanoGPT's prepare.py wrote
            path.mkdir(parents=True)
            for split in ("train", "val"):
                np.arange(4096, dtype=np.uint16).tofile(path / f"{split}.bin")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(corpus_path)

    return provide_data


@pytest.mark.parametrize("command", RUNS)
def test_every_config_command_in_the_readme_composes_and_validates(command, users_machine):
    for overrides in jobs(overrides_of(command)):
        cfg, problems = compose_overrides(overrides)
        assert not problems, f"{command}\n  job {overrides}: {problems}"
        users_machine(cfg)
        fill_cluster_rendezvous(cfg)  # as nanogpt-run does first, inside a submitit job
        assert not validate(cfg), f"{command}\n  job {overrides}: {validate(cfg)}"


@pytest.mark.parametrize(("command", "shown"), REFUSALS)
def test_every_refusal_in_the_readme_is_the_one_the_runner_gives(command, shown):
    overrides = overrides_of(command)
    cfg, problems = compose_overrides(overrides)
    assert not problems
    assert check(cfg, overrides)[1] == shown


@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_every_other_command_in_the_readme_is_accepted_by_its_program(command):
    COMMAND_LINE_PARSERS[program(command)](arguments_of(command))


def test_the_architecture_names_every_module():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [path for path in (ROOT / "nanogpt_runner").rglob("*.py") if path.name != "__init__.py"]
    assert len(modules) > 50
    assert [str(path.relative_to(ROOT)) for path in modules if f"`{path.name}`" not in text] == []
