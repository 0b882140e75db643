"""The Launch tab's back end: the page sets named fields only, each parsed by its type and range; paths must
lie in the runs folder or a --data-dir folder; the runner's own check decides and reports the config it
would run, whose data source and layout the page pins; Stop only signals process groups it started."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from nanogpt_runner.viewer.launcher import Launcher
from nanogpt_runner.viewer.page_policy import (
    LaunchError,
    PagePolicy,
    build_overrides,
    effective_problems,
    form_values,
    parse_extra,
    presets,
)

PINNED = ["run.progress=false", "parallel.nnodes=1", "parallel.rdzv_endpoint=null", "data.cache_dir=null"]


@pytest.fixture
def policy(tmp_path) -> PagePolicy:
    (tmp_path / "runs" / "a_run").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("hello")
    return PagePolicy(tmp_path / "runs", (tmp_path / "data",))


def refusal(policy: PagePolicy, extra: str = "", **form) -> str:
    with pytest.raises(LaunchError) as err:
        build_overrides(form, extra, policy)
    return str(err.value)


def test_the_form_becomes_overrides_written_by_the_launcher(policy):
    form = {"model": "tiny", "n_layer": " 4 ", "n_head": "", "n_embd": None, "dropout": "0.1", "lr": "3e-4",
            "grad_accum": 2.0, "precision": "", "recompute": True, "compile": False, "parallel": "ddp", "nproc": "2",
            "name": "exp1"}
    assert build_overrides(form, "", policy) == [
        "model=tiny", "model.n_layer=4", "model.dropout=0.1", "optimizer.lr=0.0003", "train.grad_accum=2",
        "train.recompute=true", "parallel=ddp", "parallel.nproc_per_node=2", "run.name='exp1'",
        f"run.root='{policy.runs_root}'", *PINNED]


def test_extra_settings_split_like_words_with_quotes_and_name_fields_by_config_key():
    assert parse_extra('optimizer.lr=1e-3  data.path="/data/my text.txt" experiment=baby_cpu') == [
        ("lr", "1e-3"), ("data.path", "/data/my text.txt"), ("experiment", "baby_cpu")]
    with pytest.raises(LaunchError, match="check the quotes"):
        parse_extra('data.path="/unclosed')


def test_presets_and_paths_inside_the_allowed_folders_pass(policy):
    extra = "experiment=baby_cpu data=text_file data.path=input.txt resume=a_run train.seed=3 parallel.dp=fsdp"
    assert build_overrides({}, extra, policy)[:6] == [
        "+experiment=baby_cpu", "data=text_file", f"data.path='{policy.data_dirs[0] / 'input.txt'}'",
        f"resume='{policy.runs_root / 'a_run'}'", "train.seed=3", "parallel.dp=fsdp"]


@pytest.mark.parametrize("extra", [
    "-m", "--multirun", "--config-dir=/tmp", "rm", "~train.seed", "+train.seed=3", "++train.seed=3",
    "hydra/launcher=submitit_slurm", "+hydra.run.dir=/tmp/elsewhere", "hydra.job.chdir=true",
    "run.root=/tmp/elsewhere", "data.cache_dir=/etc", "data.url=file:///etc/passwd", "data.url=http://10.0.0.1/",
    "parallel.nnodes=2", "parallel.rdzv_endpoint=attacker.example:29400", "parallel.rdzv_id=x",
    "parallel.max_restarts=100", "model/gpt2=x", "n_layer=4",
])
def test_keys_outside_the_allowlist_are_refused(policy, extra):
    assert "is not a setting the page may change" in refusal(policy, extra)


@pytest.mark.parametrize("extra, why", [
    ("train.seed=${oc.env:HOME}", "a whole number"),
    ("train.seed=$\\{oc.env:HOME\\}", "a whole number"),  # Hydra would unescape this into an interpolation
    ("optimizer.lr=${oc.env:SECRET}", "a number is needed"),
    ("model.n_layer=1e3", "a whole number"),
    ("model.n_layer=0", "from 1 to 256"),
    ("train.seed=-1", "a whole number"),
    ("parallel.nproc_per_node=1000", "from 1 to 64"),
    ("optimizer.lr=0", "(0, 10]"),
    ("model.dropout=1", "[0, 1)"),
    ("optimizer.lr=nan", "a number is needed"),
    ("train.compile=yes", "use true or false"),
    ("train.precision=fp64", "use one of"),
    ("model=../../etc", "use one of"),
    ("experiment=../x", "use one of"),
    ("run.name=$\\{oc.env:SECRET\\}", "run name"),
    ("run.name=../../../x", "run name"),
    ("run.name=" + "x" * 65, "run name"),
    ("resume=/etc", "only runs inside the runs folder"),
    ("resume=../data", "only runs inside the runs folder"),
    ("data.path=/etc/passwd", "outside the data folders"),
    ("data.path=../runs/a_run", "outside the data folders"),
    ("data.path=input.txt$HOME", "holds a quote, a backslash, a $"),
    ("data.path='input.txt\\y'", "holds a quote, a backslash, a $"),
    ("data.path=\"input'x\"", "holds a quote, a backslash, a $"),
    ("train.seed=3 train.seed=4", "set twice"),
])
def test_values_are_parsed_by_type_and_range_and_refused_with_the_reason(policy, extra, why):
    assert why in refusal(policy, extra)


def test_names_with_control_characters_are_refused(policy):
    assert "run name 'a\\x1b[31mb'" in refusal(policy, name="a\x1b[31mb")


def test_the_form_sends_only_its_own_fields(policy):
    assert "the form has no field" in refusal(policy, **{"parallel.nnodes": "2"})


def test_data_paths_need_a_data_folder_named_by_the_operator(policy, tmp_path):
    no_data = PagePolicy(policy.runs_root)
    assert "trains only on the built-in corpora" in refusal(no_data, f"data.path={tmp_path / 'data' / 'input.txt'}")


def test_symlinks_out_of_the_allowed_folders_are_followed_then_refused(policy, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "data" / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert "outside the data folders" in refusal(policy, "data.path=link.txt")
    (tmp_path / "data" / "folder").mkdir()
    (tmp_path / "data" / "folder" / "a.txt").symlink_to(tmp_path / "secret.txt")
    assert "leads outside the data folders (a symlink)" in refusal(policy, "data.path=folder")
    (tmp_path / "runs" / "escape").symlink_to(tmp_path)
    assert "only runs inside the runs folder" in refusal(policy, "resume=escape")


def test_a_data_folder_too_large_to_check_is_refused(policy, tmp_path, monkeypatch):
    from nanogpt_runner.viewer import page_policy

    monkeypatch.setattr(page_policy, "MAX_DATA_FILES", 3)
    for i in range(4):
        (tmp_path / "data" / "many" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "data" / "many" / f"{i}.txt").write_text("x")
    assert "more than the page checks" in refusal(policy, "data.path=many")


def test_the_config_the_runner_would_use_is_checked_and_its_source_pinned(policy, tmp_path):
    """A resumed run takes its checkpoint's config: a data source or layout the page could not choose is
    refused, and what passes is pinned on the command line."""
    good = {"data": {"url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                     "path": str(tmp_path / "data" / "input.txt")}, "parallel": {"nproc_per_node": 2}}
    assert effective_problems(good, policy) == ([], [
        f"data.url='{good['data']['url']}'", f"data.path='{tmp_path / 'data' / 'input.txt'}'",
        "parallel.nproc_per_node=2"])
    assert effective_problems({**good, "model": {"init_from": "gpt2"}}, policy) == effective_problems(good, policy)
    hostile = {"data": {"url": "http://169.254.169.254/latest", "path": "/etc/passwd"},
               "parallel": {"nproc_per_node": 4096}, "model": {"init_from": "/etc/weights.pt"}}
    problems, _ = effective_problems(hostile, policy)
    assert len(problems) == 4 and "is not a built-in corpus" in problems[0]
    assert "outside the data folders" in problems[1] and "from 1 to 64" in problems[2]
    assert "model.init_from='/etc/weights.pt' is outside the runs folder" in problems[3]


def test_presets_come_from_conf():
    assert "tiny" in presets("model") and "single" in presets("parallel")


def test_form_values_skip_empty_fields_and_unticked_boxes():
    assert form_values({"model": "", "recompute": False, "compile": True, "nproc": 2.0}) == [
        ("compile", True), ("nproc", 2)]


def test_the_runners_own_check_refuses_an_invalid_config_with_its_words(tmp_path):
    problems = Launcher(tmp_path).validate(["model=tiny", "model.n_embd=33", "model.n_head=4"])
    assert any("model.n_embd=33 is not divisible by model.n_head=4" in p for p in problems)


# A stand-in for nanogpt-run that records its arguments and waits to be stopped: it shows what the
# Launcher itself does (an argument list, no shell; SIGTERM to its group on Stop), in a second.
FAKE_RUNNER = [sys.executable, "-c", "import sys, time; print(sys.argv[1:], flush=True); time.sleep(60)"]
# A stand-in for the runner's check: accepts anything and answers with a config using a built-in corpus.
ACCEPT_ALL = [sys.executable, "-c", "print('{\"data\": {\"path\": null}, \"parallel\": {\"nproc_per_node\": 1}}')"]
REFUSE_ALL = [sys.executable, "-c", "import sys; print('error: invalid config:\\n  - model.n_layer=0 is bad', "
                                    "file=sys.stderr); sys.exit(2)"]


def test_start_passes_overrides_as_an_argument_list_and_stop_signals_its_group(tmp_path):
    launcher = Launcher(tmp_path, runner=FAKE_RUNNER, checker=ACCEPT_ALL)
    launched = launcher.start({"model": "tiny", "name": "exp1"}, "train.seed=5")
    try:
        deadline = time.monotonic() + 30
        while "]" not in launcher.log_tail(launched.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.log_tail(launched.process.pid).strip() == str(
            ["model=tiny", "run.name='exp1'", "train.seed=5", f"run.root='{tmp_path.resolve()}'", *PINNED,
             "data.path=null", "parallel.nproc_per_node=1"])
        assert os.getpgid(launched.process.pid) == launched.process.pid  # its own group: Stop reaches all of it
        assert launched.state == "running" and "exp1" in launched.describe()
        assert "sent SIGTERM" in launcher.stop(launched.process.pid)
        assert launched.process.wait(timeout=30) == -signal.SIGTERM
        assert "already ended" in launcher.stop(launched.process.pid)
    finally:
        launched.process.kill()


def test_nothing_starts_when_the_check_refuses(tmp_path):
    launcher = Launcher(tmp_path, runner=FAKE_RUNNER, checker=REFUSE_ALL)
    with pytest.raises(LaunchError, match="model.n_layer=0 is bad"):
        launcher.start({"model": "tiny"})
    assert launcher.processes == {}


def test_stop_refuses_processes_it_did_not_start(tmp_path):
    with pytest.raises(LaunchError, match="was not started by this viewer"):
        Launcher(tmp_path).stop(1)


# A stand-in runner that reports what every child of the page starts with: hub access, import path, folder.
REPORT_ENV = [sys.executable, "-c", "import os, sys; print(os.environ.get('HF_HUB_OFFLINE'), sys.flags.safe_path, "
                                    "os.getcwd(), flush=True); import time; time.sleep(60)"]


def _plant_module(folder) -> None:
    """A nanogpt_runner package in ``folder`` that leaves a marker when imported: what a folder others can
    write would hold, for a child that puts its current folder on sys.path."""
    package = folder / "nanogpt_runner" / "launch"
    package.mkdir(parents=True)
    marker = f"open({str(folder / 'MARKER')!r}, 'w').close()\n"
    for init in (folder / "nanogpt_runner" / "__init__.py", package / "__init__.py", package / "check.py"):
        init.write_text(marker)


def test_children_start_offline_with_a_safe_path_in_the_runs_folder(tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "runs", tmp_path / "cwd"
    root.mkdir()
    elsewhere.mkdir()
    _plant_module(root)
    _plant_module(elsewhere)
    monkeypatch.chdir(elsewhere)  # the viewer started in a folder others can write
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert Launcher(root).validate(["model=tiny"]) == []  # the real check, -P: the planted modules never load
    assert not (root / "MARKER").exists() and not (elsewhere / "MARKER").exists()

    launcher = Launcher(root, runner=REPORT_ENV, checker=ACCEPT_ALL)
    launched = launcher.start({"model": "tiny"})
    try:
        deadline = time.monotonic() + 30
        while not launcher.log_tail(launched.process.pid).strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.log_tail(launched.process.pid).split() == ["1", "True", str(root.resolve())]
    finally:
        launched.process.kill()
    online = Launcher(root, runner=REPORT_ENV, checker=ACCEPT_ALL, hub_online=True)
    assert "HF_HUB_OFFLINE" not in online.env and online.env["PYTHONSAFEPATH"] == "1"


def test_the_sample_tab_runs_offline_with_a_safe_path_in_the_runs_folder(tmp_path, monkeypatch):
    from nanogpt_runner.viewer.sampler import Sampler

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    report = [sys.executable, "-c", "import os, sys; print(os.environ.get('HF_HUB_OFFLINE'), sys.flags.safe_path, "
                                    "os.getcwd())"]
    assert Sampler(tmp_path, report).sample(tmp_path, "\n", 5).split() == ["1", "True", str(tmp_path)]


def test_the_page_starts_at_most_max_runs_at_once(tmp_path):
    launcher = Launcher(tmp_path, runner=FAKE_RUNNER, checker=ACCEPT_ALL, max_runs=2)
    started = [launcher.start({"model": "tiny"}) for _ in range(2)]
    try:
        with pytest.raises(LaunchError, match="2 runs started from this page are still running.*--max-runs 2"):
            launcher.start({"model": "tiny"})
        assert len(launcher.processes) == 2
        started[0].process.kill()
        started[0].process.wait(timeout=30)
        started.append(launcher.start({"model": "tiny"}))  # one ended: room for one more
    finally:
        for launched in started:
            launched.process.kill()


@pytest.mark.parametrize("cores, gpus, device, nproc, allowed", [
    (2, 0, "auto", 64, False), (2, 0, "cpu", 2, True), (2, 4, "auto", 4, True), (2, 4, "cuda", 8, False),
    (2, 4, "cpu", 4, False)])
def test_a_run_from_the_page_has_at_most_one_rank_per_core_or_gpu(policy, cores, gpus, device, nproc, allowed):
    policy.cores, policy.gpus = cores, gpus
    effective = {"data": {"path": None}, "parallel": {"nproc_per_node": nproc}, "train": {"device": device}}
    problems, _ = effective_problems(effective, policy)
    if allowed:
        assert problems == []
    else:
        assert len(problems) == 1 and "\n" not in problems[0]
        assert f"parallel.nproc_per_node={nproc}: this machine has" in problems[0]
        assert "or fewer (or start it from a shell)" in problems[0]
