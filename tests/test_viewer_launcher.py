"""The Launch tab's back end: the form becomes overrides, only key=value overrides for nanogpt-run pass,
the runner's own check decides, and Stop only signals processes this viewer started."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from nanogpt_runner.viewer.launcher import (
    Launcher,
    LaunchError,
    build_overrides,
    form_overrides,
    override_problem,
    parse_extra,
    presets,
)


def test_the_form_becomes_overrides_with_empty_fields_left_to_the_preset():
    form = {"model": "tiny", "n_layer": " 4 ", "n_head": "", "n_embd": None, "dropout": "0.1", "lr": "3e-4",
            "grad_accum": "2", "precision": "", "recompute": True, "compile": False, "parallel": "ddp", "nproc": "2",
            "name": "exp1"}
    assert form_overrides(form) == ["model=tiny", "model.n_layer=4", "model.dropout=0.1", "optimizer.lr=3e-4",
                                    "train.grad_accum=2", "train.recompute=true", "parallel=ddp",
                                    "parallel.nproc_per_node=2", "run.name=exp1"]


def test_extra_overrides_split_like_words_with_quotes():
    assert parse_extra('optimizer.lr=1e-3  data.path="/data/my text.txt"') == [
        "optimizer.lr=1e-3", "data.path=/data/my text.txt"]
    with pytest.raises(LaunchError, match="check the quotes"):
        parse_extra('data.path="/unclosed')


@pytest.mark.parametrize("token", ["optimizer.lr=3e-4", "+experiment=baby_cpu", "model=tiny", "++train.seed=3",
                                   "data.path=/some/where/input.txt", "resume=null"])
def test_plain_overrides_pass(tmp_path, token):
    assert override_problem(token, tmp_path) is None


@pytest.mark.parametrize("token, why", [
    ("-m", "is not a key=value override"),
    ("--multirun", "is not a key=value override"),
    ("--config-dir=/tmp", "is not a key=value override"),
    ("rm", "is not a key=value override"),
    ("~train.seed", "is not a key=value override"),
    ("hydra/launcher=submitit_slurm", "which the viewer decides"),
    ("+hydra.run.dir=/tmp/elsewhere", "which the viewer decides"),
    ("hydra.job.chdir=true", "which the viewer decides"),
    ("run.root=/tmp/elsewhere", "which the viewer decides"),
    ("data.cache_dir=/etc", "which the viewer decides"),
    ("run.name=${oc.env:HOME}", "interpolations"),
    ("resume=/etc", "must point inside the runs folder"),
    ("resume=../outside", "must point inside the runs folder"),
])
def test_anything_but_a_plain_override_is_refused_with_the_reason(tmp_path, token, why):
    assert why in override_problem(token, tmp_path)


def test_a_shell_trick_in_the_extra_box_is_refused_not_run(tmp_path):
    with pytest.raises(LaunchError) as err:
        build_overrides({}, "model=tiny; rm -rf / && echo", tmp_path)
    assert "'rm' is not a key=value override" in str(err.value)
    assert "'&&' is not a key=value override" in str(err.value)


def test_the_viewer_adds_its_runs_root_and_no_progress_bar(tmp_path):
    assert build_overrides({"model": "tiny"}, "optimizer.lr=1e-3", tmp_path) == [
        "model=tiny", "optimizer.lr=1e-3", f"run.root={tmp_path}", "run.progress=false"]


def test_a_bad_run_name_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="run name"):
        build_overrides({"name": "a b/c"}, "", tmp_path)


def test_presets_come_from_conf():
    assert "tiny" in presets("model") and "single" in presets("parallel")


def test_the_runners_own_check_refuses_an_invalid_config_with_its_words(tmp_path):
    problems = Launcher(tmp_path).validate(["model=tiny", "model.n_embd=33", "model.n_head=4"])
    assert any("model.n_embd=33 is not divisible by model.n_head=4" in p for p in problems)


# A stand-in for nanogpt-run that records its arguments and waits to be stopped: it shows what the
# Launcher itself does (an argument list, no shell; SIGTERM on Stop), in a second instead of a training run.
FAKE_RUNNER = [sys.executable, "-c", "import sys, time; print(sys.argv[1:], flush=True); time.sleep(60)"]
ACCEPT_ALL = [sys.executable, "-c", "pass"]
REFUSE_ALL = [sys.executable, "-c", "import sys; print('error: invalid config:\\n  - model.n_layer=0 is bad', "
                                    "file=sys.stderr); sys.exit(2)"]


def test_start_passes_overrides_as_an_argument_list_and_stop_sends_sigterm(tmp_path):
    launcher = Launcher(tmp_path, runner=FAKE_RUNNER, checker=ACCEPT_ALL)
    launched = launcher.start({"model": "tiny"}, "data.path='/a b/c;d.txt'")
    try:
        deadline = time.monotonic() + 30
        while "]" not in launcher.log_tail(launched.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.log_tail(launched.process.pid).strip() == str(
            ["model=tiny", "data.path=/a b/c;d.txt", f"run.root={tmp_path.resolve()}", "run.progress=false"])
        assert launched.state == "running" and "started" in launched.describe()
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
