"""``resume=`` on a nanoGPT out_dir continues its weights, AdamW state and iteration count in a new run
of ours (``model.init_from`` stays weights-only). The out_dir here is our own nanoGPT export: exactly what
nanoGPT's train.py saves (ckpt.pt with model, optimizer, model_args, iter_num, best_val_loss, config). The viewer's
launch form accepts the same resume: its check plans it as nanogpt-run does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

from nanogpt_runner.viewer.launcher import Launcher
from nanogpt_runner.weights.nanogpt_resume import nanogpt_checkpoint


def train_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if m["kind"] == "train"}


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("run.json"))


def test_resume_on_a_nanogpt_out_dir_continues_its_optimizer_and_iteration(tmp_path, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith(("run.root", "train.max_iters"))]
    first = run_cli([*overrides, "train.max_iters=10", "train.log_interval=1", f"run.root={tmp_path / 'a'}"],
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path / "a")
    exported = subprocess.run([str(Path(sys.executable).parent / "nanogpt-export"), str(run), str(tmp_path / "nano"),
                               "--format", "nanogpt", "--which", "latest"], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert nanogpt_checkpoint(str(tmp_path / "nano")) == tmp_path / "nano" / "ckpt.pt"
    assert nanogpt_checkpoint(str(run)) is None  # a run of ours resumes as one


    resumed = run_cli([*overrides, "train.max_iters=14", "train.log_interval=1", f"resume={tmp_path / 'nano'}",
                       f"run.root={tmp_path / 'b'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing nanoGPT's" in resumed.stdout + resumed.stderr
    (new,) = run_dirs(tmp_path / "b")
    losses = train_losses(new)
    assert min(losses) == 11  # it starts after iteration 10, where nanoGPT's checkpoint is
    before = train_losses(run)
    # the trained model and its moments: nearer the loss where the run stopped than to a fresh start's
    assert abs(losses[11] - before[10]) < abs(losses[11] - before[1])
    assert not (tmp_path / "nano" / "checkpoints").exists()  # nanoGPT's out_dir is never written

    refused = run_cli([*overrides, "train.max_iters=14", f"resume={tmp_path / 'nano'}", "model.n_layer=3",
                       f"run.root={tmp_path / 'c'}"], cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "model.n_layer=3" in refused.stderr and "have n_layer=2" in refused.stderr

    # The viewer's launch form asks the runner's own check, which plans this resume as nanogpt-run does; an
    # out_dir in the runs folder whose ckpt.pt is a symlink to a file outside it is refused.
    runs = tmp_path / "runs"
    shutil.copytree(tmp_path / "nano", runs / "nano")
    (runs / "linked").mkdir()
    (runs / "linked" / "ckpt.pt").symlink_to(tmp_path / "nano" / "ckpt.pt")
    corpus = next(Path(o.split("=", 1)[1]) for o in overrides if o.startswith("data.path="))
    page = Launcher(runs, data_dirs=(corpus.parent,))
    problems, arguments = page.plan([*overrides, "train.max_iters=14", f"resume={runs / 'nano'}"])
    assert problems == [] and f"resume={runs / 'nano'}" in arguments
    [problem] = page.plan([*overrides, "train.max_iters=14", f"resume={runs / 'nano'}", "model.n_layer=3"])[0]
    assert problem.startswith("cannot resume") and problem.replace(str(runs), str(tmp_path)) in refused.stderr
    [problem] = page.plan([*overrides, "train.max_iters=14", f"resume={runs / 'linked'}"])[0]
    assert problem.startswith(f"resume='{runs / 'linked'}': its ckpt.pt points outside the runs folder")
