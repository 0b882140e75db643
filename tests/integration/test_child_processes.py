"""Every child Python process the launcher starts runs with ``-P``: a ``nanogpt_runner/`` package planted in the
working directory (a folder others can write) is never imported by the rank server or a sweep job's worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanogpt_runner.launch.app import worker_command

pytestmark = pytest.mark.integration


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """(a working directory holding a planted nanogpt_runner package, the marker its import would write)."""
    marker = tmp_path / "marker"
    package = tmp_path / "cwd" / "nanogpt_runner"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return package.parent, marker


def test_a_sweep_worker_does_not_import_from_the_working_directory(planted, tmp_path):
    cwd, marker = planted
    done = subprocess.run(worker_command(tmp_path / "no-such-run"), cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "usage" in done.stderr
    assert not marker.exists()


def test_the_rank_server_does_not_import_from_the_working_directory(planted):
    cwd, marker = planted
    launcher = textwrap.dedent("""
        import multiprocessing, os
        from nanogpt_runner.launch.torchrun import start_rank_server
        start_rank_server()
        child = multiprocessing.get_context("forkserver").Process(target=os.getpid)
        child.start()  # forked by the server once it has imported its preload
        child.join()
        assert "PYTHONSAFEPATH" not in os.environ  # the launcher's own environment as it was
        print("exit", child.exitcode)
    """)
    # The launcher itself runs as the nanogpt-run console script does: its own folder, not the cwd, on sys.path.
    done = subprocess.run([sys.executable, "-P", "-c", launcher], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "exit 0" in done.stdout, done.stderr
    assert not marker.exists()
