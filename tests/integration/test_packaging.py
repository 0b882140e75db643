"""The wheel is the product a user installs (``pip install .`` or a git URL): built from a copy of the
checkout, installed into a fresh virtual environment, it must compose its configs and train on the
tiny-shakespeare it carries from a folder that has no source tree in sight. Nothing is written into
the checkout: the build, the venv and the runs all live under tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nanogpt_runner.config.schema import CONF_DIR

ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").exists())
SHIPPED = ("pyproject.toml", "README.md", "nanogpt_runner", "conf", "hydra_plugins")
BUILD_LEFTOVERS = {"build", "dist", "outputs", "multirun"}  # what a build or a run in the checkout would leave


def test_the_editable_install_reads_the_checkouts_conf():
    assert CONF_DIR == ROOT / "conf"  # edits to conf/ apply at once, nothing is copied


def test_a_wheel_installed_without_the_source_tree_composes_and_trains(tmp_path):
    checkout_before = {p.name for p in ROOT.iterdir()}
    source = tmp_path / "source"
    source.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         source], cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("nanogpt_runner-*.whl")
    shutil.rmtree(source)
    venv = tmp_path / "venv"  # torch and the other dependencies come from this Python's site-packages
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "-q", wheel],
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = run([venv / "bin" / "python", "-c", "from nanogpt_runner.config.schema import CONF_DIR; print(CONF_DIR)"],
                cwd=elsewhere)
    assert Path(where.strip()).is_relative_to(venv)  # the wheel's own configs, not the checkout's
    job = run([venv / "bin" / "nanogpt-run", "--cfg", "job", "model=tiny"], cwd=elsewhere)
    assert "n_embd: 32" in job and "precision: auto" in job
    run([venv / "bin" / "nanogpt-run", "model=tiny", "train.max_iters=5", "train.eval_interval=5",
         "train.eval_iters=1", "train.log_interval=5", "train.batch_size=2", "train.precision=fp32",
         "run.progress=false", f"data.cache_dir={tmp_path / 'cache'}", "run.root=runs"], cwd=elsewhere)
    [record] = (elsewhere / "runs").rglob("run.json")
    dataset = json.loads(record.read_text())["dataset"]  # no data.path: the corpus inside the wheel
    assert (dataset["name"], dataset["origin"], dataset["vocab_size"]) == ("shakespeare_char", "embedded", 65)
    assert str(venv) in dataset["source"]  # the wheel's own copy, not the checkout's
    assert not ({p.name for p in ROOT.iterdir()} - checkout_before) & BUILD_LEFTOVERS


def run(args: list, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
