"""Hostile inputs, each from the security review (issue 8), and what must happen instead of running code.

Checkpoints: a crafted DCP folder (a pickled ``__reduce__`` in ``.metadata``, a pickled object in a
``.distcp`` slice, a storage entry pointing out of the folder) is refused with one message by every reader
(nanogpt-sample, nanogpt-run resume=, the viewer's Sample tab) and the marker file its payload would
create never exists; a real sharded checkpoint still samples. The viewer: a foreign Host header gets 400
before Gradio sees the request; Stop on a 2-rank run ends nanogpt-run, torchrun and both ranks and the
run is interrupted. Runs folders: a FIFO, a symlink or deeply nested JSON in a run does not block or
break the others; names are escaped before they reach Markdown. Config: data sources are http(s) or a
regular file/folder, run names plain.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import compose_config, run_cli

from nanogpt_runner.viewer.synthetic import write_run

BIN = Path(sys.executable).parent
TOKEN = "the-viewers-token"


class Payload:
    """Unpickling this creates ``marker``: proof that a reader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, corpus_path) -> Path:
    """A real run trained by 2 FSDP ranks: its checkpoints are torch.distributed.checkpoint folders."""
    tmp = tmp_path_factory.mktemp("sharded")
    result = run_cli([
        "model=tiny", "train.max_iters=6", "train.eval_interval=3", "train.eval_iters=1", "train.log_interval=3",
        "train.batch_size=4", "train.precision=fp32", "optimizer.warmup_iters=2", "run.progress=false",
        "parallel=fsdp", "parallel.nproc_per_node=2", f"data.path={corpus_path}", f"data.cache_dir={tmp / 'cache'}",
        f"run.root={tmp / 'outputs'}", "run.name=sharded"], cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp / "outputs").glob("*/*_sharded")
    assert (run_dir / "checkpoints" / "step_0000006" / ".metadata").is_file()
    return run_dir


def hostile_copy(sharded_run: Path, tmp_path: Path, craft) -> tuple[Path, Path]:
    """A copy of the run whose latest checkpoint ``craft(folder, marker)`` altered, with its manifest
    rewritten to match (an attacker controls every file, meta.json included)."""
    run = tmp_path / "hostile_run"
    shutil.copytree(sharded_run, run)
    folder, marker = run / "checkpoints" / "step_0000006", tmp_path / "marker"
    craft(folder, marker)
    meta = json.loads((folder / "meta.json").read_text())
    for name in os.listdir(folder):
        if name != "meta.json":
            data = (folder / name).read_bytes()
            meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return run, marker


def reduce_in_metadata(folder: Path, marker: Path) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))


def object_in_a_bytes_entry(folder: Path, marker: Path) -> None:
    """Legitimate metadata; the optimizer's learning rate (a pickled non-tensor entry) replaced by a payload."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    from nanogpt_runner.safe_pickle import load_dcp_metadata

    metadata = load_dcp_metadata(folder / ".metadata")
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    (folder / "__7_0.distcp").write_bytes(buffer.getvalue())
    index = next(i for i in metadata.storage_data if i.fqn == "optimizer.param_groups.0.lr")
    metadata.storage_data[index] = _StorageInfo("__7_0.distcp", 0, len(buffer.getvalue()))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def entry_outside_the_folder(folder: Path, marker: Path) -> None:
    from nanogpt_runner.safe_pickle import load_dcp_metadata

    metadata = load_dcp_metadata(folder / ".metadata")
    for info in metadata.storage_data.values():
        info.relative_path = "../../../../outside.distcp"
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def sample_cli(run: Path) -> tuple[int, str]:
    done = subprocess.run([str(BIN / "nanogpt-sample"), str(run), "max_new_tokens=5"], capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stderr


def resume_cli(run: Path) -> tuple[int, str]:
    # One process (the checkpoint was written by two): the same global batch, the same readers.
    done = run_cli([f"resume={run}", "train.max_iters=9", "parallel=single", "train.batch_size=8",
                    f"data.cache_dir={run.parent / 'cache'}"], cwd=run.parent)
    return done.returncode, done.stderr + done.stdout + (run / "run.json").read_text()


def viewer_sample(run: Path) -> tuple[int, str]:
    from nanogpt_runner.viewer.page_policy import LaunchError
    from nanogpt_runner.viewer.sampler import Sampler

    try:
        Sampler(run.parent, [str(BIN / "nanogpt-sample")]).sample(run, "\n", 5)
    except LaunchError as err:
        return 1, str(err)
    return 0, ""


METADATA_REFUSED = "does not write into checkpoint metadata"


@pytest.mark.parametrize("craft, reader, why", [
    (reduce_in_metadata, sample_cli, METADATA_REFUSED),
    (reduce_in_metadata, resume_cli, METADATA_REFUSED),
    (reduce_in_metadata, viewer_sample, METADATA_REFUSED),
    # the optimizer's entries are read when resuming (sampling reads the model's only)
    (object_in_a_bytes_entry, resume_cli, "entry optimizer.param_groups.0.lr is not plain data"),
    (entry_outside_the_folder, sample_cli, "which is not a file of the checkpoint folder"),
], ids=lambda p: getattr(p, "__name__", ""))
def test_a_crafted_sharded_checkpoint_runs_no_code_in_any_reader(sharded_run, tmp_path, craft, reader, why):
    run, marker = hostile_copy(sharded_run, tmp_path, craft)
    code, message = reader(run)
    assert not marker.exists()
    assert code != 0
    assert "refusing to load it" in message and why in message and "Traceback" not in message


def test_a_real_sharded_checkpoint_still_samples(sharded_run):
    done = subprocess.run([str(BIN / "nanogpt-sample"), str(sharded_run), "prompt=ROMEO:", "max_new_tokens=5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ROMEO:")


def test_the_page_resumes_a_real_sharded_run_by_its_folder_in_the_runs_folder(sharded_run, tmp_path, corpus_path):
    """The legitimate path: resume= relative to the runs folder, the checkpoint's data file inside a --data-dir."""
    from nanogpt_runner.viewer.launcher import Launcher

    root = tmp_path / "outputs"
    run = root / "copied_run"
    shutil.copytree(sharded_run, run)
    launcher = Launcher(root, data_dirs=(corpus_path.parent,))
    launched = launcher.start({"parallel": "single", "batch_size": "8", "max_iters": "8"}, "resume=copied_run")
    assert launched.process.wait(timeout=600) == 0, launcher.log_tail(launched.process.pid)
    assert f"resume='{run}'" in launched.overrides and f"data.path='{corpus_path.resolve()}'" in launched.overrides
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["resumes"][-1]["step"] == 6


def test_metadata_shapes_larger_than_the_files_are_refused_before_allocating(sharded_run, tmp_path):
    import torch

    from nanogpt_runner.checkpoint import dcp_read
    from nanogpt_runner.safe_pickle import UnsafePickleError, load_dcp_metadata

    def huge(folder: Path, marker: Path) -> None:
        metadata = load_dcp_metadata(folder / ".metadata")
        metadata.state_dict_metadata["model.tok_emb.weight"].size = torch.Size([10**7, 10**6])
        (folder / ".metadata").write_bytes(pickle.dumps(metadata))

    run, _ = hostile_copy(sharded_run, tmp_path, huge)
    with pytest.raises(UnsafePickleError, match="describes .* bytes of tensors but its files hold"):
        dcp_read.empty_tensors(run / "checkpoints" / "step_0000006", "model.")


def test_a_checkpoint_never_chooses_where_the_processes_meet(sharded_run, tmp_path):
    """torchrun's rendezvous store unpickles what it is sent: a resumed run takes nnodes and the rendezvous
    from its own command line, whatever the checkpoint's config says."""
    from nanogpt_runner.checkpoint.resume_plan import plan_resume
    from nanogpt_runner.launch.app import CONF_DIR

    def rendezvous_elsewhere(folder: Path, marker: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        meta["config"]["parallel"].update(nnodes=2, nproc_per_node=1, rdzv_endpoint="attacker.example:29400",
                                          rdzv_id="x")  # two nodes of one rank: the world it was saved with
        (folder / "meta.json").write_text(json.dumps(meta))

    run, _ = hostile_copy(sharded_run, tmp_path, rendezvous_elsewhere)
    overrides = [f"resume={run}", "train.max_iters=9", "train.batch_size=8"]  # one rank now: same global batch
    plan = plan_resume(compose_config(overrides), tmp_path / "new", overrides, CONF_DIR, announce=lambda _: None)
    parallel = plan.cfg.parallel
    assert (parallel.nnodes, parallel.rdzv_endpoint, parallel.rdzv_id) == (1, None, "nanogpt")


def test_dcp_metadata_unpickler_admits_only_what_dcp_writes(tmp_path):
    from nanogpt_runner.safe_pickle import UnsafePickleError, load_dcp_metadata

    marker = tmp_path / "marker"
    for hostile in (pickle.dumps(Payload(marker)), pickle.dumps({"not": "metadata"}), b"\x80\x04garbage"):
        with pytest.raises(UnsafePickleError):
            load_dcp_metadata(hostile)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the viewer

@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """The dashboard on loopback, with one extra name allowed, over a runs folder with hostile runs in it."""
    from nanogpt_runner.viewer.app import free_port, serve

    root = tmp_path_factory.mktemp("runs")
    write_run(root / "good", 10).close()
    (root / "fifo_run").mkdir()
    os.mkfifo(root / "fifo_run" / "run.json")
    write_run(root / "bigint", 10, status="running").close()  # numbers past 64 bits, in its run.json and metrics
    text = (root / "bigint" / "run.json").read_text().replace('"status": "running"', '"status": "running", '
                                                                  '"n_params": 100000000000000000000')
    (root / "bigint" / "run.json").write_text(text)
    with open(root / "bigint" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 100000000000000000000, "loss": 1.0, "tokens": 1e400}\n')
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    port = free_port("127.0.0.1", 7900)
    demo, url = serve(root, port=port, refresh_s=1.0, allowed_hosts=("dash.example",), token=TOKEN)
    yield port
    demo.close()


def http_status(port: int, host_header: str, path: str = "/", method: str = "GET", body: str | bytes | None = None,
                origin: str | None = None, token: str | None = TOKEN, headers: dict | None = None) -> int:
    return http_response(port, host_header, path, method, body, origin, token, headers)[0]


def http_response(port: int, host_header: str, path: str = "/", method: str = "GET", body: str | bytes | None = None,
                  origin: str | None = None, token: str | None = TOKEN,
                  headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; the token goes in the Authorization header unless None."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"Host": host_header, "Origin": origin or f"http://{host_header}", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"token {token}"
    if isinstance(body, str):
        sent["Content-Type"] = "application/json"
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    connection.close()
    return answer


def viewer_client(port: int):
    from gradio_client import Client

    return Client(f"http://127.0.0.1:{port}/", headers={"Authorization": f"token {TOKEN}"}, verbose=False,
                  download_files=False, analytics_enabled=False)


@pytest.mark.parametrize("host", ["attacker.example:{port}", "attacker.example", "127.0.0.1.attacker.example:{port}",
                                  "localhost.:{port}", ""])
def test_a_foreign_host_header_is_refused_before_gradio(viewer, host):
    """DNS rebinding: a web page whose domain resolves to 127.0.0.1 sends its own name as Host."""
    host = host.format(port=viewer)
    assert http_status(viewer, host) == 400
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x", "event_data": None, "trigger_id": None})
    assert http_status(viewer, host, "/gradio_api/queue/join", "POST", join) == 400


@pytest.mark.parametrize("origin", ["http://attacker.example", "null"])
def test_a_request_from_another_sites_page_is_refused(viewer, origin):
    """A cross-site request carries the attacker's Origin even when it is addressed to 127.0.0.1."""
    assert http_status(viewer, f"127.0.0.1:{viewer}", origin=origin) == 400


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "dash.example"])
def test_loopback_names_and_allowed_hosts_are_served(viewer, host):
    assert http_status(viewer, host.format(port=viewer)) == 200


def test_a_fifo_named_run_json_neither_blocks_nor_hides_the_other_runs(viewer):
    rows = viewer_client(viewer).predict("", None, api_name="/runs")
    assert {row["folder"] for row in rows} >= {"good"}


def test_numbers_past_64_bits_leave_the_page_and_the_api_answering(viewer):
    """orjson refuses an int past 64 bits: one crafted run used to break /runs (and the table) for everyone."""
    rows = {row["folder"]: row for row in viewer_client(viewer).predict("", None, api_name="/runs")}
    assert rows["bigint"]["steps"] == 1e20 and "good" in rows
    assert http_status(viewer, f"127.0.0.1:{viewer}") == 200


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1], ""])
def test_every_request_without_the_token_is_refused(viewer, token):
    """Any local account can reach a loopback port: the page, its queue and its API need the token."""
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x", "event_data": None, "trigger_id": None})
    for path, method, body in [("/", "GET", None), ("/config", "GET", None), ("/gradio_api/queue/join", "POST", join),
                               ("/gradio_api/call/runs", "POST", json.dumps({"data": ["", None]}))]:
        assert http_status(viewer, f"127.0.0.1:{viewer}", path, method, body, token=token) == 401
    assert http_status(viewer, f"127.0.0.1:{viewer}", "/", token=None,
                       headers={"Cookie": f"nanogpt-view-token-{viewer}=wrong"}) == 401


def test_the_printed_urls_token_sets_a_cookie_that_the_pages_own_requests_carry(viewer):
    status, headers, _ = http_response(viewer, f"127.0.0.1:{viewer}", f"/?token={TOKEN}", token=None)
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie == f"nanogpt-view-token-{viewer}={TOKEN}" and "HttpOnly" in headers["set-cookie"]
    assert http_status(viewer, f"127.0.0.1:{viewer}", "/config", token=None, headers={"Cookie": cookie}) == 200


@pytest.mark.parametrize("name", ["start", "stop_run", "generate", "save", "confirm", "update"])
def test_handlers_outside_the_public_api_are_refused_by_name(viewer, name):
    """Gradio serves a private handler by name all the same; the viewer refuses those routes itself."""
    for path in [f"/gradio_api/call/{name}", f"/gradio_api/run/{name}", f"/gradio_api/api/{name}"]:
        assert http_status(viewer, f"127.0.0.1:{viewer}", path, "POST", json.dumps({"data": []})) == 404


def test_uploads_are_refused_and_analysis_takes_few_ids(viewer):
    from gradio_client.exceptions import AppError

    boundary = "nanogpt"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + b"x" * 65536 + f"\r\n--{boundary}--\r\n".encode()
    status = http_status(viewer, f"127.0.0.1:{viewer}", "/gradio_api/upload", "POST", body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 413
    client = viewer_client(viewer)
    with pytest.raises(AppError, match="at most 50 run folders"):
        client.predict(["good"] * 5000, None, api_name="/analysis")
    assert "good" in client.predict(["good"], None, api_name="/analysis")


@pytest.mark.parametrize("header, name", [("example.org:7860", "example.org"), ("[::1]:7860", "::1"),
                                          ("LOCALHOST", "localhost"), ("::1", "::1")])
def test_host_names_are_read_as_a_server_would(header, name):
    from nanogpt_runner.viewer.host_check import host_name

    assert host_name(header) == name


# ---------------------------------------------------------------------------------------- runs folders

def test_hostile_run_folders_are_skipped_while_the_rest_refresh(tmp_path):
    from nanogpt_runner.viewer.store import RunStore

    write_run(tmp_path / "good", 10).close()
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "run.json")
    write_run(tmp_path / "fifo_metrics", 10).close()
    (tmp_path / "fifo_metrics" / "metrics.jsonl").unlink()
    os.mkfifo(tmp_path / "fifo_metrics" / "metrics.jsonl")
    (tmp_path / "secret.json").write_text(json.dumps({"name": "SECRET", "status": "completed"}))
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "run.json").symlink_to(tmp_path / "secret.json")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "run.json").write_text('{"name": "deep", "config": ' + "[" * 5000 + "]" * 5000 + "}")
    (tmp_path / "deep_line").mkdir()
    (tmp_path / "deep_line" / "run.json").write_text('{"name": "deep_line", "status": "running"}')
    (tmp_path / "deep_line" / "metrics.jsonl").write_text('{"kind": "train", "x": ' + "[" * 100000 + "\n")

    store = RunStore(tmp_path)
    polled = threading.Thread(target=store.poll, daemon=True)
    polled.start()
    polled.join(timeout=60)
    assert not polled.is_alive(), "a FIFO in the runs folder blocked the refresh"
    entries = {run_id: entry for run_id, entry in store.entries.items()}
    assert entries["good"].record.info["status"] == "completed" and not entries["good"].notes
    for damaged in ("fifo", "link", "deep"):
        assert "unreadable" in entries[damaged].notes[0]
    assert all(entry.record.info.get("name") != "SECRET" for entry in entries.values())
    assert entries["fifo_metrics"].record.info["status"] == "completed"


@pytest.mark.parametrize("prompt, tokens", [("\n", 10**9), ("\n", 0), ("x" * 10_001, 5)])
def test_the_sample_tab_checks_its_own_limits(tmp_path, prompt, tokens):
    """The browser enforces the token box's maximum; a raw request does not go through the browser."""
    from nanogpt_runner.viewer.page_policy import LaunchError
    from nanogpt_runner.viewer.sampler import Sampler

    with pytest.raises(LaunchError, match="at most|from 1 to"):
        Sampler(tmp_path, [sys.executable, "-c", "raise SystemExit('must not start')"]).sample(tmp_path, prompt, tokens)


def test_names_and_values_are_escaped_before_markdown():
    from nanogpt_runner.analysis.records import RunRecord
    from nanogpt_runner.viewer.dashboard import analysis_markdown, markdown_text

    hostile = "![x](http://attacker.example/pixel.png) <img src=x onerror=alert(1)> **b** `c`\n# h"
    text = markdown_text(hostile)
    assert "![" not in text and "<img" not in text and "\n" not in text
    record = RunRecord(hostile, Path("/nowhere"), {"name": hostile, "status": "completed"})
    rendered = analysis_markdown([record], None)
    assert "![" not in rendered and "<img" not in rendered and "](http" not in rendered


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("override, message", [
    ("data.url=file:///etc/passwd", "is a local file: use data.path=/etc/passwd"),
    ("data.url=ftp://example.org/x.txt", "is not an http(s) address"),
    ("data.url=https:///no-host", "is not an http(s) address"),
    ("data.path=/dev/zero", "is not a regular file or a folder"),
    ("run.name=../../../x", "run.name='../../../x' must be 1-64 letters"),
])
def test_data_sources_and_run_names_are_checked_by_validation(override, message):
    from nanogpt_runner.config.validate import validate


    problems = validate(compose_config(["model=tiny", override]))
    assert any(message in p for p in problems), problems


def test_a_fifo_data_path_is_one_line_not_a_hang(tmp_path):
    from nanogpt_runner.config.validate import validate


    os.mkfifo(tmp_path / "input.txt")
    problems = validate(compose_config(["model=tiny", "data=text_file", f"data.path={tmp_path / 'input.txt'}"]))
    assert [p for p in problems if "data.path" in p] == [
        f"data.path={tmp_path / 'input.txt'} is not a regular file or a folder (a FIFO, device or socket): point it "
        f"at a text file or a folder of them."]
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "sock"))
        assert any("not a regular file" in p for p in validate(compose_config(
            ["model=tiny", "data=text_file", f"data.path={tmp_path / 'sock'}"])))


# ------------------------------------------------------------------------------------------ Stop

def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_every_process_of_a_two_rank_run_and_it_is_interrupted(tmp_path, corpus_path, monkeypatch):
    from nanogpt_runner.viewer.launcher import Launcher

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    launcher = Launcher(tmp_path / "outputs", data_dirs=(corpus_path.parent,))
    form = {"model": "tiny", "parallel": "ddp", "nproc": "2", "name": "stopme", "precision": "fp32",
            "batch_size": "4", "max_iters": "100000"}
    launched = launcher.start(form, f"data=text_file data.path={corpus_path} train.eval_interval=100000 "
                                    f"train.log_interval=1 train.eval_iters=1")
    try:
        deadline = time.monotonic() + 240
        metrics = None
        while time.monotonic() < deadline and launched.process.poll() is None:
            found = list((tmp_path / "outputs").glob("*/*_stopme/metrics.jsonl"))
            if found and b'"kind": "train"' in found[0].read_bytes():
                metrics = found[0]
                break
            time.sleep(0.5)
        assert metrics is not None, launcher.log_tail(launched.process.pid)
        processes = {launched.process.pid} | descendants(launched.process.pid)
        assert len(processes) >= 3, "expected nanogpt-run (torchrun's agent) and two ranks"
        assert "sent SIGTERM" in launcher.stop(launched.process.pid)
        launched.process.wait(timeout=120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(alive(pid) for pid in processes):
            time.sleep(0.5)
        assert not any(alive(pid) for pid in processes)
        assert json.loads((metrics.parent / "run.json").read_text())["status"] == "interrupted"
    finally:  # the ranks lead their own sessions: a failed test kills them by pid, not with the launcher's group
        for pid in {launched.process.pid} | descendants(launched.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
