"""Answer only requests addressed to this viewer by name: a guard against DNS rebinding.

A web page the user visits can make its own domain resolve to 127.0.0.1 and then talk to a loopback
dashboard as if it were its own site; the browser still sends that domain in the Host header. So every
HTTP and WebSocket request whose Host is not one of the names this viewer is served under, or whose
Origin (a request another site's page makes) is not, is refused with 400 before Gradio (or anything that
can start a run) sees it. A plain ASGI middleware.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def served_names(host: str, allowed: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The Host names a request may carry: loopback names (a local browser), the --host value, the
    --allowed-host names, and this machine's own names when the viewer listens on every address."""
    names = {*LOOPBACK_NAMES, host, *allowed}
    if host in WILDCARD_ADDRESSES:
        names |= {socket.gethostname(), socket.getfqdn()}
    return frozenset(name.lower().strip("[]") for name in names if name)


def host_name(header: str) -> str:
    """The name part of a Host header: ``example.org:7860`` -> ``example.org``, ``[::1]:7860`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: requests whose Host header is not in ``names`` get 400 and go no further."""

    def __init__(self, app, names: frozenset[str]):
        self.app = app
        self.names = names

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin")  # sent by browsers with cross-site requests: it must be one of ours too
        origin_host = host_name(urlsplit(origin.decode("latin-1")).netloc) if origin is not None else None
        if host and host_name(host) in self.names and origin_host in (None, *self.names):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = (b"this Host (or Origin) is not an address this nanogpt-view serves; start it with --allowed-host "
                b"NAME to serve it under that name\n")
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
