"""``nanogpt-run --cfg job -m ...`` and ``--info -m ...``: Hydra refuses the pair with a traceback; the runner
answers in one line with the command that describes the sweep's first job."""

from __future__ import annotations

import pytest

from nanogpt_runner.launch.app import describe_sweep_refusal

PREFIX = "--cfg and --info describe one run, -m starts a sweep: describe the sweep's first job with nanogpt-run "


@pytest.mark.parametrize("argv, command", [
    (["--cfg", "job", "-m", "optimizer.lr=1e-3,3e-4", "model=tiny"], "--cfg job optimizer.lr=0.001 model=tiny"),
    (["-m", "--info", "defaults", "model=tiny,baby"], "--info defaults model=tiny"),
    (["--multirun", "-i", "train.seed=range(3)"], "-i train.seed=0"),
    (["-m", "--cfg=hydra", "-p", "hydra.sweeper", "hparams_search=lr_warmup_wd"],
     "--cfg=hydra -p hydra.sweeper hparams_search=lr_warmup_wd"),
])
def test_describing_a_sweep_is_one_line_naming_the_first_jobs_command(argv, command):
    assert describe_sweep_refusal(argv) == PREFIX + command


@pytest.mark.parametrize("argv", [["--cfg", "job", "model=tiny"], ["-m", "optimizer.lr=1e-3,3e-4"], []])
def test_one_run_described_or_a_sweep_started_is_left_to_hydra(argv):
    assert describe_sweep_refusal(argv) is None
