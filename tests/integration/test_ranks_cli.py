"""nanogpt-run refuses more ranks than the node can run in one line, with exit code 2 and no run folder: before
torch is imported for a train.device=cpu run, once the device is known for train.device=auto."""

from __future__ import annotations

import subprocess
import sys

from conftest import run_cli

from nanogpt_runner.config.schema import CPU_RANKS_PER_CORE, available_cores

TOO_MANY = CPU_RANKS_PER_CORE * available_cores() + 1


def test_too_many_cpu_ranks_are_refused_before_torch_is_imported(tmp_path, tiny_overrides):
    args = [*tiny_overrides, "parallel=ddp", f"parallel.nproc_per_node={TOO_MANY}", "train.device=cpu"]
    probe = ("import atexit, sys; from nanogpt_runner.launch import app; "
             "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
             f"sys.argv = ['nanogpt-run', *{args!r}]; sys.exit(app.main())")
    result = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"parallel.nproc_per_node={TOO_MANY} on {available_cores()} CPU core(s)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip().endswith("torch imported: False")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("run.json"))


def test_too_many_ranks_for_an_auto_device_are_refused_once_it_is_known(tmp_path, tiny_overrides):
    result = run_cli([*tiny_overrides, "parallel=ddp", "parallel.nproc_per_node=64"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "parallel.nproc_per_node=64" in result.stderr and "Traceback" not in result.stderr
