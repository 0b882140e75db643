"""Shared test fixtures: a small corpus, tiny configs, the real CLI. Nothing here touches the network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nanogpt_runner.config.schema import CONF_DIR, register_schema
from nanogpt_runner.data.sources import embedded_path

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    """Everything under tests/integration carries the ``integration`` marker (``-m "not integration"``)."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """tiny-shakespeare, the copy shipped inside the package: the same text wherever the suite runs."""
    return embedded_path()


@pytest.fixture
def outside(tmp_path):
    """A file outside the run folder that a planted symlink points at (think ~/.bashrc)."""
    path = tmp_path / "bashrc"
    path.write_text("original\n")
    return path


@pytest.fixture(scope="session")
def measured_peaks(tmp_path_factory) -> Path:
    """The CPU's fp32 matmul peak at the thread count of each rank of a 1-, 2- and 4-rank run, measured once for
    the session (half a second each) and kept as a user's data cache keeps it: each test's fresh cache
    starts with this file (tiny_overrides) instead of measuring again in every run."""
    import torch

    from nanogpt_runner.config.schema import available_cores
    from nanogpt_runner.perf.hardware import PEAK_FILE, peak_flops

    cache, threads = tmp_path_factory.mktemp("peaks"), torch.get_num_threads()
    try:
        for ranks in (1, 2, 4):
            torch.set_num_threads(max(available_cores() // ranks, 1))
            peak_flops(torch.device("cpu"), "fp32", cache)
    finally:
        torch.set_num_threads(threads)
    return cache / PEAK_FILE


@pytest.fixture
def tiny_overrides(tmp_path, corpus_path, measured_peaks) -> list[str]:
    """Overrides for a run that trains in about a second, writing only under tmp_path."""
    (tmp_path / "cache").mkdir()
    shutil.copy(measured_peaks, tmp_path / "cache")
    return [
        "model=tiny", "train.max_iters=20", "train.eval_interval=10", "train.eval_iters=2", "train.log_interval=5",
        "train.batch_size=4", "train.precision=fp32", "optimizer.warmup_iters=5", "run.progress=false",
        f"data.path={corpus_path}", f"data.cache_dir={tmp_path / 'cache'}", f"run.root={tmp_path / 'outputs'}",
    ]


def compose_config(overrides: list[str]):
    """The config ``nanogpt-run`` would build from these overrides."""
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``nanogpt-run ARGS`` as a user starts it: the installed console script beside this Python."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "nanogpt-run"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def fail_rank_1(tmp_path: Path, monkeypatch, at_call: int, when: tuple[str, str], message: str) -> None:
    """Make rank 1 raise RuntimeError(``message``) at its ``at_call``-th gradient-norm computation, while rank 0 is
    in (or entering) a collective, when the environment variable ``when[0]`` is ``when[1]``.

    A sitecustomize.py on PYTHONPATH, which every Python process of the test imports: the ranks are forked from
    the rank server, which has it, so rank and environment are asked at the call, once torchrun has set them."""
    name, value = when
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os

        from nanogpt_runner.distributed import parallelize as parallel

        original, calls = parallel.Parallelized.clip_grad_norm, []

        def clip_grad_norm(self, max_norm):
            if os.environ.get("RANK") == "1" and os.environ.get({name!r}) == {value!r}:
                calls.append(1)
                if len(calls) == {at_call}:
                    raise RuntimeError({message!r})
            return original(self, max_norm)

        parallel.Parallelized.clip_grad_norm = clip_grad_norm
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "inject"))
