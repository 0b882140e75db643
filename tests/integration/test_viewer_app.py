"""Starting the viewer: clear refusals for bad input, no torch, the next free port, a URL with a token (or
--no-token, said at start-up), its temp folder gone at exit, and a Gradio API that offers the read-only
views (to a client that sends the token) and nothing that starts a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nanogpt_runner.viewer.synthetic import config, write_run

REPO = next(folder for folder in Path(__file__).resolve().parents if (folder / "pyproject.toml").exists())
ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
TOKEN = "a-test-token"


def viewer_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "viewer.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **popen)


@pytest.mark.parametrize("args, message", [
    (["{root}/missing"], "does not exist: pass the folder that holds your runs"),
    (["{root}/a_file"], "is a file, not a folder"),
    (["{root}", "--auth", "alice"], "--auth must be USER:PASSWORD"),
    (["{root}", "--auth", ":pw"], "--auth must be USER:PASSWORD"),
    (["{root}", "--host", "0.0.0.0"], "add --auth USER:PASSWORD, or keep the default --host 127.0.0.1"),
    (["{root}", "--port", "70000"], "is not a TCP port"),
    (["{root}", "--refresh", "0"], "must be a positive number of seconds"),
    (["{root}", "--max-runs", "0"], "--max-runs 0 must be a whole number from 1 to 1000"),
    (["{root}", "--data-dir", "{root}/missing"], "is not a folder: pass a folder that holds the text files"),
    (["{root}", "--data-dir", "{root}/a_file"], "is not a folder: pass a folder that holds the text files"),
])
def test_bad_input_is_one_message_naming_the_fix_and_exit_2(tmp_path, args, message):
    (tmp_path / "a_file").write_text("not a folder")
    process = viewer_cli(*[a.format(root=tmp_path) for a in args])
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert message in err and "Traceback" not in err


def test_the_viewer_starts_on_the_next_free_port_with_a_token_and_never_imports_torch(tmp_path):
    import urllib.error

    runs, temp = tmp_path / "runs", tmp_path / "tmp"
    write_run(runs / "a", 10).close()
    temp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        imports_log = open(tmp_path / "imports.log", "w")  # -X importtime: every imported module, on stderr
        process = subprocess.Popen([sys.executable, "-X", "importtime", str(REPO / "viewer.py"), str(runs),
                                    "--port", str(port)], stdout=subprocess.PIPE, stderr=imports_log,
                                   text=True, env={**ENV, "TMPDIR": str(temp)})
        try:
            first_line = process.stdout.readline()
            assert first_line.startswith(f"nanogpt-view: {runs.resolve()} at http://127.0.0.1:")
            url = first_line.split(" at ")[1].split()[0]
            base, _, token = url.partition("/?token=")
            assert not base.endswith(f":{port}") and len(token) >= 32  # that port was taken; a fresh token
            assert "nanogpt-runner" in _get(url)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base, timeout=30)
            assert refused.value.code == 401
            assert [p.name for p in temp.iterdir() if p.name.startswith("nanogpt-view-")]
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)
            imports_log.close()
    assert process.returncode == 0  # Ctrl+C is how the viewer is meant to stop
    assert not [p.name for p in temp.iterdir() if p.name.startswith("nanogpt-view-")]  # its temp folder is gone
    imports = (tmp_path / "imports.log").read_text()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in imports.splitlines() if "|" in line}
    assert "gradio" in imported and "torch" not in imported


def test_no_token_is_said_at_start_up(tmp_path):
    write_run(tmp_path / "a", 10).close()
    process = viewer_cli(str(tmp_path), "--no-token", "--port", "7990")
    try:
        first_line, second_line = process.stdout.readline(), process.stdout.readline()
        assert "?token=" not in first_line
        assert second_line.startswith("nanogpt-view: --no-token: every account on this machine")
        url = first_line.split(" at ")[1].split()[0]
        assert "nanogpt-runner" in _get(url)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def _get(url: str, deadline_s: float = 120) -> str:
    """The page at ``url`` once the server answers."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dashboard on two fixture runs, in this process, as Gradio tests itself."""
    from nanogpt_runner.viewer.app import free_port, serve

    root = tmp_path_factory.mktemp("runs")
    write_run(root / "base", 50, cfg=config(), mem_gb=1.0, start_time=1).close()
    write_run(root / "recompute", 50, cfg=config(**{"train.recompute": True}), mem_gb=0.7, start_time=2).close()
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo, url = serve(root, port=free_port("127.0.0.1", 7870), refresh_s=1.0, token=TOKEN)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    """A script's client: the token in the Authorization header (a query parameter works for a browser)."""
    from gradio_client import Client

    return Client(served, headers={"Authorization": f"token {TOKEN}"}, verbose=False, download_files=False,
                  analytics_enabled=False)


def test_the_api_lists_runs_and_explains_a_comparison(client):
    rows = client.predict("", None, api_name="/runs")
    assert [(r["folder"], r["status"], r["settings"]["train.recompute"]) for r in rows] == [
        ("recompute", "completed", True), ("base", "completed", False)]
    assert rows[0]["peak_mem_gb"] == pytest.approx(0.77) and rows[0]["stop"] == "finished its 50 steps"
    text = client.predict(["base", "recompute", "../../etc"], 3.0, api_name="/analysis")
    assert "train.recompute False → True (recompute vs base): peak memory 1.10 GB → 0.77 GB (-30%)" in text


def test_nothing_that_starts_a_process_is_on_the_api(client):
    from nanogpt_runner.viewer.ui import PUBLIC_API

    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/runs", "/analysis", "/groups"} == {f"/{name}" for name in PUBLIC_API}
    for hidden in ["/start", "/stop_run", "/generate", "/update"]:
        with pytest.raises(ValueError):
            client.predict(api_name=hidden)


def test_with_auth_nothing_is_served_before_login(tmp_path):
    import urllib.error

    from gradio_client import Client

    from nanogpt_runner.viewer.app import free_port, serve

    write_run(tmp_path / "a", 10).close()
    demo, url = serve(tmp_path, port=free_port("127.0.0.1", 7880), auth=("alice", "s3cret"), token=None)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}config", timeout=30)
        assert refused.value.code == 401
        client = Client(url, auth=("alice", "s3cret"), verbose=False, download_files=False, analytics_enabled=False)
        assert [row["folder"] for row in client.predict("", None, api_name="/runs")] == ["a"]
    finally:
        demo.close()
