"""The docs are held to the code.

The README and the pages of docs/ are the user's manual, so their commands must work as written: every
``nanogpt-run`` and ``nanogpt-plan`` command in any page composes and passes the config's checks (each
job of a sweep), each refusal a page shows is the refusal the runner gives, word for word, and the other
programs' command lines are accepted by their parsers. A renamed field or flag, a removed preset or a
reworded message fails here rather than in a user's terminal. The README stays a front door (at most
300 lines, linking every page of docs/), every link between the pages lands on a file and a heading
that exist, and docs/ARCHITECTURE.md names every module.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import re
import shlex
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import submitit
from hydra.core.override_parser.overrides_parser import OverridesParser

from nanogpt_runner.cli import evaluate, export, export_logs, report, sample
from nanogpt_runner.config.validate import validate
from nanogpt_runner.launch.app import check, compose_overrides
from nanogpt_runner.launch.torchrun import fill_cluster_rendezvous
from nanogpt_runner.viewer import app

# the checkout, from tests/, tests/unit/ or tests/integration/ alike
ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").exists())
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 300
CONFIG_PROGRAMS = ("nanogpt-run", "nanogpt-plan")
# The other programs' own command-line parsers: each refuses a line it cannot take (argparse's SystemExit,
# SampleError) before it looks at any file.
COMMAND_LINE_PARSERS = {
    "nanogpt-sample": sample.parse_args,
    "nanogpt-view": app.argument_parser().parse_args,
    "nanogpt-report": report.argument_parser().parse_args,
    "nanogpt-export": export.argument_parser().parse_args,
    "nanogpt-export-logs": export_logs.argument_parser().parse_args,
    "nanogpt-eval": evaluate.argument_parser().parse_args,
}
# Flags of nanogpt-run and nanogpt-plan that are not config overrides (with how many values each takes).
FLAGS = {"-m": 0, "--multirun": 0, "--help": 0, "--cfg": 1, "--estimate-only": 0}
# A shell line's leading environment assignments (``WANDB_MODE=offline nanogpt-run ...``).
ENVIRONMENT = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")


def program(command: str) -> str:
    return command.split(" ", 1)[0]


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a page."""
    return re.findall(r"^ *```(\w*)\n(.*?)^ *```", page.read_text(), re.S | re.M)


def shell_commands(line: str) -> list[str]:
    """The commands of one shell line as a page writes it: its prompt and environment assignments left
    out, each side of ``&&`` a command of its own."""
    line = line.removeprefix("$ ").strip()
    return [ENVIRONMENT.sub("", part.strip()) for part in line.split(" && ")]


def examples_of(page: Path) -> list[tuple[str, str, list[str]]]:
    """(page, command as written, the output the page shows under it) for each command of a ```bash or
    ```console block, its continuation lines joined."""
    examples = []
    for language, block in code_blocks(page):
        if language not in ("bash", "console"):
            continue
        lines = textwrap.dedent(block).replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            output = list(itertools.takewhile(lambda text: not text.startswith("$ "), lines[i + 1:]))
            for command in shell_commands(line):
                if program(command) in (*CONFIG_PROGRAMS, *COMMAND_LINE_PARSERS):
                    examples.append((page_name(page), command, output))
    return examples


def arguments_of(command: str) -> list[str]:
    """A command's arguments as the shell passes them: its program and comment left out."""
    return shlex.split(command, comments=True)[1:]


def overrides_of(command: str) -> list[str]:
    """The config overrides of a command: its program, flags and comment left out."""
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
    """The problems of an ``error: invalid config:`` a page shows, one string each."""
    if not output or output[0] != "error: invalid config:":
        return []
    return [line.strip().removeprefix("- ") for line in output[1:] if line.strip()]


def example_id(example) -> str:
    return f"{example[0]}: {example[1]}"


EXAMPLES = [example for page in PAGES for example in examples_of(page)]
CONFIG_EXAMPLES = [(page, command, output) for page, command, output in EXAMPLES if program(command) in CONFIG_PROGRAMS]
OTHER_COMMANDS = [(page, command) for page, command, _ in EXAMPLES if program(command) not in CONFIG_PROGRAMS]
RUNS = [(page, command) for page, command, output in CONFIG_EXAMPLES if not refusal_shown(output)]
REFUSALS = [(page, command, refusal_shown(output)) for page, command, output in CONFIG_EXAMPLES
            # the memory refusal's figures are the RAM of the machine it was shown on: test_memory holds it
            if refusal_shown(output) and "available RAM" not in output[-1]]


def test_the_pages_are_read_as_expected():
    """The parsing above finds the pages' commands, so the tests below cannot pass by finding none: the
    manual's commands (most of them now in docs/), its refusals, its sweeps, and the README's tour."""
    assert len(PAGES) >= 10
    assert len(RUNS) > 40
    assert len(REFUSALS) >= 2
    assert any(" -m " in command for _, command in RUNS)
    assert max(len(jobs(overrides_of(command))) for _, command in RUNS) >= 4
    assert {program(command) for _, command in OTHER_COMMANDS} == set(COMMAND_LINE_PARSERS)
    pages_with_commands = {page for page, *_ in EXAMPLES}
    assert len(pages_with_commands) >= 8
    tour = [command for page, command, _ in EXAMPLES if page == "README.md"]
    assert {program(command) for command in tour} >= {"nanogpt-run", "nanogpt-view", "nanogpt-report", "nanogpt-sample"}
    assert any(" -m " in command for command in tour) and any("resume=" in command for command in tour)
    assert any(page == "README.md" for page, *_ in REFUSALS)
    assert len({command.split()[1] for _, command in SCRIPT_COMMANDS}) >= 8


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_no_command_hides_from_these_tests(page):
    """A command of ours is checked only in a ```bash or ```console block, and only when its program is
    one these tests know: a command in an untagged block, or of a new program, would go unchecked."""
    for language, block in code_blocks(page):
        for line in block.splitlines():
            for command in shell_commands(line):
                if not command.startswith("nanogpt-"):
                    continue
                assert language in ("bash", "console"), f"{page_name(page)}: ```{language} block holds {command!r}"
                assert program(command) in (*CONFIG_PROGRAMS, *COMMAND_LINE_PARSERS), command


def test_the_readme_is_a_front_door_to_every_page():
    """At most 300 lines, and a link to every page of docs/ (so no page is only reachable by search)."""
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    linked = {target.split("#")[0] for target in re.findall(r"\]\((docs/[^)\s]+)\)", text)}
    assert {page_name(page) for page in PAGES[1:]} <= linked


def test_ci_runs_the_readmes_test_command():
    """The README's Tests section opens with THE test command, and .ci/run ends by running exactly it."""
    tests = README.read_text().split("\n## Tests\n", 1)[1]
    command = shlex.split(re.search(r"```bash\n(.*?)\n", tests).group(1), comments=True)
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert command == shlex.split(ci_lines[-1]) == ["pytest"]


def script_commands() -> list[tuple[str, str]]:
    """(page, command) for each ``python scripts/NAME.py ...`` line of a page, in a code block or inline."""
    found = []
    for page in PAGES:
        text = page.read_text()
        commands = re.findall(r"^(python scripts/\w+\.py.*)$", text, re.M)
        commands += re.findall(r"`(python scripts/\w+\.py[^`]*)`", text)  # an inline span may wrap a line
        found += [(page_name(page), " ".join(command.split("#", 1)[0].split())) for command in commands]
    return found


SCRIPT_COMMANDS = script_commands()


class Parsed(Exception):
    """Raised once a script has parsed its command line, before it does any work."""


@pytest.mark.parametrize(("page", "command"), SCRIPT_COMMANDS, ids=map(example_id, SCRIPT_COMMANDS))
def test_every_script_command_in_the_docs_is_accepted_by_its_parser(page, command, monkeypatch):
    """The benchmark scripts parse their command lines in ``main``: run it up to its ``parse_args``."""
    words = shlex.split(command)[1:]
    spec = importlib.util.spec_from_file_location("docs_script", ROOT / words[0])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parse_args(parser, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", words)
    with pytest.raises(Parsed):
        script.main()


def named_object_exists(dotted: str) -> bool:
    """Whether ``nanogpt_runner.a.b`` (a module, or a module's attribute) is there."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_file_and_module_a_page_names_exists(page):
    """Modules and tests moved into packages: a page naming a file or module by its old place fails here."""
    text = page.read_text()
    files = re.findall(r"\b((?:nanogpt_runner|tests|scripts|conf|docs)/[\w/.-]+\.(?:py|yaml|sh|md|png))", text)
    modules = re.findall(r"\b(nanogpt_runner(?:\.[A-Za-z_]\w*)+)", text)
    assert [path for path in files if not (ROOT / path).exists()] == []
    assert [name for name in modules if not named_object_exists(name)] == []


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.S | re.M)
    return {anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_link_lands_on_a_file_and_a_heading(page):
    """Sections moved between pages: a link to a page or a heading that is not there fails here."""
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (fragment and linked.suffix == ".md" and fragment not in anchors(linked)):
            broken.append(target)
    assert broken == []


@pytest.fixture
def users_machine(tmp_path, monkeypatch, corpus_path):
    """What the pages' commands take as the user's own: a working directory holding the data files they
    name (created on demand by the returned function), and, for the cluster commands, a SLURM job."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: types.SimpleNamespace(hostnames=["node-a"], job_id="7"))

    def provide_data(cfg) -> None:
        for task in cfg.eval.tasks:  # a task file the page names (its items are the launcher's to check)
            if task.endswith((".jsonl", ".parquet")):
                Path(task).touch()
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


@pytest.mark.parametrize(("page", "command"), RUNS, ids=map(example_id, RUNS))
def test_every_config_command_in_the_docs_composes_and_validates(page, command, users_machine):
    for overrides in jobs(overrides_of(command)):
        cfg, problems = compose_overrides(overrides)
        assert not problems, f"{command}\n  job {overrides}: {problems}"
        users_machine(cfg)
        fill_cluster_rendezvous(cfg)  # as nanogpt-run does first, inside a submitit job
        assert not validate(cfg), f"{command}\n  job {overrides}: {validate(cfg)}"


@pytest.mark.parametrize(("page", "command", "shown"), REFUSALS, ids=map(example_id, REFUSALS))
def test_every_refusal_in_the_docs_is_the_one_the_runner_gives(page, command, shown):
    overrides = overrides_of(command)
    cfg, problems = compose_overrides(overrides)
    assert not problems
    assert check(cfg, overrides)[1] == shown


@pytest.mark.parametrize(("page", "command"), OTHER_COMMANDS, ids=map(example_id, OTHER_COMMANDS))
def test_every_other_command_in_the_docs_is_accepted_by_its_program(page, command):
    COMMAND_LINE_PARSERS[program(command)](arguments_of(command))


def test_the_architecture_names_every_module():
    """By its path in the package (``config/schema.py``), or by its name where its package is the topic."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    package = ROOT / "nanogpt_runner"
    modules = [path.relative_to(package) for path in package.rglob("*.py") if path.name != "__init__.py"]
    assert len(modules) > 50
    assert [str(module) for module in modules if f"`{module}`" not in text and f"`{module.name}`" not in text] == []
