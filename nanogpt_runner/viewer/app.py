"""``nanogpt-view [RUNS_DIR]``: check the command line, then serve the dashboard.

Every bad input (a runs folder that is not there, a malformed --auth, a public --host without --auth,
a --data-dir that is not a folder, a port range with nothing free) ends in one message that names the
problem and the fix, and exit code 2: no traceback. Gradio is imported only after the arguments are good,
so mistakes fail fast. The server answers only requests addressed to it by name that carry its token
(see host_check): the printed URL holds a fresh random token, unless ``--no-token`` says otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import threading
from pathlib import Path

from nanogpt_runner.viewer.launcher import DEFAULT_MAX_RUNS

DEFAULT_PORT = 7860
PORT_TRIES = 100
MAX_UPLOAD = "1kb"  # the page has no upload: Gradio's upload route takes nothing bigger
NO_TOKEN_WARNING = ("nanogpt-view: --no-token: every account on this machine (and every program it runs) can use "
                    "this page, which starts and deletes runs; keep it for a single-user machine")


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-view", description="Live dashboard of nanogpt-runner runs.")
    parser.add_argument("runs_dir", nargs="?", default="outputs", type=Path,
                        help="folder searched recursively for runs (run.json); default outputs/")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port; the next free one is used when it is taken (default {DEFAULT_PORT})")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between live updates (default 2)")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="require this login; mandatory when --host is not a loopback address")
    parser.add_argument("--data-dir", action="append", default=[], type=Path, metavar="DIR", dest="data_dirs",
                        help="a folder whose text files runs launched from the page may train on (repeatable); "
                             "without it the page trains only on the built-in corpora")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME", dest="allowed_hosts",
                        help="another name the page is reached by, e.g. a DNS name or a proxy's (repeatable); "
                             "requests naming any other host are refused")
    parser.add_argument("--no-token", action="store_true",
                        help="serve without the random token of the printed URL (a single-user machine only)")
    parser.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS, metavar="N",
                        help=f"runs started from the page that may be alive at once (default {DEFAULT_MAX_RUNS})")
    parser.add_argument("--allow-hub", action="store_true",
                        help="let runs, checks and samples started from the page reach the Hugging Face hub "
                             "(default: offline, HF_HUB_OFFLINE=1; weights come from the local cache)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argument_parser()
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    return args


def argument_problem(args: argparse.Namespace) -> str | None:
    """The first thing wrong with the command line, as a sentence with the fix; None when all is well."""
    if not args.runs_dir.exists():
        return (f"runs folder {args.runs_dir} does not exist: pass the folder that holds your runs "
                f"(nanogpt-view outputs/), or start a run first with nanogpt-run")
    if not args.runs_dir.is_dir():
        return f"{args.runs_dir} is a file, not a folder: pass the folder that holds your runs"
    if args.auth is not None and parse_auth(args.auth) is None:
        return "--auth must be USER:PASSWORD with both parts non-empty, e.g. --auth alice:s3cret"
    if not is_loopback(args.host) and args.auth is None:
        return (f"--host {args.host} makes the dashboard (which can start training runs) reachable from other "
                f"machines: add --auth USER:PASSWORD, or keep the default --host 127.0.0.1")
    if not 0 < args.port < 65536:
        return f"--port {args.port} is not a TCP port: use 1-65535"
    if not args.refresh > 0:
        return f"--refresh {args.refresh} must be a positive number of seconds, e.g. --refresh 2"
    if not 1 <= args.max_runs <= 1000:
        return f"--max-runs {args.max_runs} must be a whole number from 1 to 1000, e.g. --max-runs 2"
    for folder in args.data_dirs:
        if not folder.is_dir():
            return f"--data-dir {folder} is not a folder: pass a folder that holds the text files to train on"
    return None


def parse_auth(text: str) -> tuple[str, str] | None:
    user, sep, password = text.partition(":")
    return (user, password) if sep and user and password else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str, start: int) -> int | None:
    """The first port from ``start`` on that nothing listens on."""
    for port in range(start, min(start + PORT_TRIES, 65536)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    return None


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, refresh_s: float = 2.0,
          auth: tuple[str, str] | None = None, data_dirs: tuple[Path, ...] = (), allowed_hosts: tuple[str, ...] = (),
          *, token: str | None, max_runs: int = DEFAULT_MAX_RUNS, hub_online: bool = False):
    """Build and launch the app in the background; returns (demo, url). ``demo.close()`` stops it.
    ``token`` (None: no token) is required of every request: scripts send ``Authorization: token TOKEN``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from starlette.middleware import Middleware

    from nanogpt_runner.viewer.dashboard import Dashboard
    from nanogpt_runner.viewer.host_check import HostCheck, PublicApiOnly, TokenCheck, served_names, token_cookie_name
    from nanogpt_runner.viewer.launcher import Launcher
    from nanogpt_runner.viewer.sampler import Sampler, sampling_available
    from nanogpt_runner.viewer.store import RunStore
    from nanogpt_runner.viewer.ui import CSS, PUBLIC_API, build_app

    store = RunStore(runs_dir)
    store.poll()
    launcher = Launcher(store.root, data_dirs, max_runs=max_runs, hub_online=hub_online)
    demo = build_app(Dashboard(store), launcher, refresh_s,
                     Sampler(store.root, hub_online=hub_online) if sampling_available() else None)
    demo.queue(default_concurrency_limit=1)
    middleware = [Middleware(HostCheck, names=served_names(host, allowed_hosts))]
    if token is not None:
        middleware.append(Middleware(TokenCheck, token=token, cookie=token_cookie_name(port)))
    middleware.append(Middleware(PublicApiOnly, public=frozenset(PUBLIC_API)))
    _, url, _ = demo.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True,
                            quiet=True, theme=gr.themes.Soft(), css=CSS, footer_links=[],
                            max_file_size=MAX_UPLOAD, app_kwargs={"middleware": middleware})
    return demo, url


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    port = free_port(args.host, args.port)
    if port is None:
        raise SystemExit(f"nanogpt-view: error: no free port in {args.port}-{args.port + PORT_TRIES - 1} on "
                         f"{args.host}: pass --port with another starting port")
    root = args.runs_dir.resolve()
    token = None if args.no_token else secrets.token_urlsafe(32)
    query = "" if token is None else f"/?token={token}"
    print(f"nanogpt-view: {root} at http://{args.host}:{port}{query} (refresh every {args.refresh:g} s; "
          f"Ctrl+C to stop)", flush=True)
    if token is None:
        print(NO_TOKEN_WARNING, flush=True)
    # Our own handlers, set before Gradio starts: a Ctrl+C or SIGTERM that lands while Gradio is still
    # launching (where an asyncio runner may take SIGINT over and swallow it) still stops the viewer.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    demo, _ = serve(root, args.host, port, args.refresh, parse_auth(args.auth) if args.auth else None,
                    data_dirs=tuple(args.data_dirs), allowed_hosts=tuple(args.allowed_hosts), token=token,
                    max_runs=args.max_runs, hub_online=args.allow_hub)
    while not stop.wait(0.5):
        pass
    demo.close()
