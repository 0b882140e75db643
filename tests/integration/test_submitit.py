"""Cluster launch through hydra-submitit-launcher: a sweep of torchrun jobs under ``submitit_local`` (the
same code path as SLURM, run on this machine), the SLURM preset's shape, and the rendezvous a multi-node
SLURM job fills in for itself."""

from __future__ import annotations

import argparse
import types

from conftest import compose_config, run_cli
from hydra import compose, initialize_config_dir

from nanogpt_runner.launch.app import CONF_DIR
from nanogpt_runner.launch.torchrun import NEWER_OPTIONS, fill_cluster_rendezvous, known_newer_options, torchrun_args
from nanogpt_runner.runs.rundir import find_runs, read_run


def test_a_submitit_local_sweep_runs_each_job_as_a_process_group(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.max_iters=4", "train.eval_interval=4", "optimizer.warmup_iters=1",
                 "parallel=ddp"]
    result = run_cli(["-m", "hydra/launcher=submitit_local", *overrides, "train.seed=1,2"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = [read_run(d) for d in find_runs(tmp_path / "outputs")]
    assert sorted(r["sweep"]["job"] for r in runs) == [0, 1]
    assert all(r["status"] == "completed" and r["world_size"] == 2 for r in runs)
    assert list((tmp_path / "outputs").rglob(".submitit/*/*_log.out"))  # submitit really ran the jobs
    assert "train.seed=2" in result.stdout and "completed" in result.stdout


def test_the_slurm_preset_runs_one_torchrun_agent_per_node(tiny_overrides):
    from nanogpt_runner.config.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=[*tiny_overrides, "hydra/launcher=slurm_torchrun", "parallel=fsdp",
                                 "parallel.nproc_per_node=8", "parallel.nnodes=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 1, 8)


def test_a_multi_node_slurm_job_meets_on_its_first_node(tiny_overrides, monkeypatch):
    import submitit

    job = types.SimpleNamespace(hostnames=["node-a", "node-b"], job_id="4242")
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: job)
    cfg = compose_config([*tiny_overrides, "parallel=ddp", "parallel.nnodes=2"])
    fill_cluster_rendezvous(cfg)
    assert cfg.parallel.rdzv_endpoint.startswith("node-a:") and cfg.parallel.rdzv_id == "nanogpt-4242"
    command = torchrun_args(cfg.parallel, "RUN")
    assert "--nnodes=2" in command and "--rdzv-backend=c10d" in command and "--standalone" not in command
    assert command[-3:] == ["-m", "nanogpt_runner.train.worker", "RUN"]


def test_torchrun_forwards_sigusr2_to_the_ranks_and_gives_them_time_to_checkpoint(tiny_overrides):
    cfg = compose_config([*tiny_overrides, "parallel=ddp", "parallel.timeout_min=20"])
    command = torchrun_args(cfg.parallel, "RUN")
    [handled] = [arg for arg in command if arg.startswith("--signals-to-handle=")]
    assert {"SIGTERM", "SIGINT", "SIGUSR2"} <= set(handled.split("=", 1)[1].split(","))
    assert "--shutdown-timeout=1200" in command


def test_an_older_torchrun_is_given_only_the_options_it_knows(tiny_overrides):
    """A torchrun from before March 2026 has no --shutdown-timeout: argparse would refuse the whole command line
    (exit 2), so it is left out there (and run_group says what that costs)."""
    from torch.distributed.run import get_args_parser

    older = argparse.ArgumentParser()
    for option in ("--nproc-per-node", "--nnodes", "--max-restarts", "--monitor-interval", "--signals-to-handle",
                   "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id"):
        older.add_argument(option)
    older.add_argument("-m", "--module", action="store_true")
    older.add_argument("training_script")
    older.add_argument("training_script_args", nargs=argparse.REMAINDER)
    assert known_newer_options(get_args_parser()) == set(NEWER_OPTIONS)  # this torch knows them all
    assert known_newer_options(older) == set()
    cfg = compose_config([*tiny_overrides, "parallel=ddp"])
    args = older.parse_args(torchrun_args(cfg.parallel, "RUN", known_newer_options(older)))
    assert args.module and args.training_script == "nanogpt_runner.train.worker"
    assert args.training_script_args == ["RUN"]


def test_submitit_local_hiding_the_gpus_is_said_not_silently_trained_on_cpu(tiny_overrides):
    from nanogpt_runner.launch.torchrun import hidden_gpus_problem

    cfg = compose_config([*tiny_overrides, "train.device=auto", "parallel=ddp"])
    hidden = {"SUBMITIT_EXECUTOR": "local", "CUDA_VISIBLE_DEVICES": ""}
    problem = hidden_gpus_problem(cfg, env=hidden, gpus_present=True)
    assert "hydra.launcher.gpus_per_node=2" in problem and "train.device=cpu" in problem
    assert hidden_gpus_problem(cfg, env=hidden, gpus_present=False) is None  # a CPU machine: nothing hidden
    assert hidden_gpus_problem(cfg, env={**hidden, "CUDA_VISIBLE_DEVICES": "0,1"}, gpus_present=True) is None
    cpu = compose_config([*tiny_overrides, "train.device=cpu", "parallel=ddp"])
    assert hidden_gpus_problem(cpu, env=hidden, gpus_present=True) is None  # the CPU on purpose
