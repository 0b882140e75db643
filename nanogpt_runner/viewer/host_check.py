"""Answer only requests addressed to this viewer by name: a guard against DNS rebinding.

A web page the user visits can make its own domain resolve to 127.0.0.1 and then talk to a loopback
dashboard as if it were its own site; the browser still sends that domain in the Host header. So every
HTTP and WebSocket request whose Host is not one of the names this viewer is served under, or whose
Origin (a request another site's page makes) is not, is refused with 400 before Gradio (or anything that
can start a run) sees it. A plain ASGI middleware.

``TokenCheck`` then asks every request for the viewer's token, the way Jupyter does: any local account
can reach a loopback port, so the address alone proves nothing. The printed URL carries the token
(``?token=...``); that first request sets a cookie, so the page's own requests carry it from then on;
scripts send the header ``Authorization: token TOKEN``.

``PublicApiOnly`` refuses Gradio's by-name routes (``/gradio_api/call|run|api/NAME``) for every name but the
public API's: Gradio serves a handler marked private by its name all the same. The page itself calls its
handlers by position through Gradio's queue, which stays open to token holders; each such handler checks
its own inputs.
"""

from __future__ import annotations

import hmac
import re
import socket
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
TOKEN_PARAM = "token"  # ?token=... in the printed URL
TOKEN_SCHEME = "token "  # Authorization: token TOKEN (as Jupyter)
# Gradio's launch calls this itself, without a token, to run the app's startup events (once; later calls do nothing).
TOKENLESS_PATHS = ("/gradio_api/startup-events",)
NAMED_ROUTE = re.compile(r"^(?:/gradio_api)?/(?:run|api|call(?:/v2)?)/([^/]+)")  # Gradio's routes by api_name


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
        await refuse(scope, send, 400, "this Host (or Origin) is not an address this nanogpt-view serves; start it "
                                        "with --allowed-host NAME to serve it under that name")


def token_cookie_name(port: int) -> str:
    """One cookie per port: cookies are shared by every port of a host, and two viewers must not clash."""
    return f"nanogpt-view-token-{port}"


class TokenCheck:
    """ASGI middleware: requests without the token (query ``token=``, header ``Authorization: token``, or the
    cookie the first of those sets) get 401, WebSockets a policy close, before Gradio sees them."""

    def __init__(self, app, token: str, cookie: str):
        self.app = app
        self.token = token.encode()
        self.cookie = cookie

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") in TOKENLESS_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM, [])
        if any(self._is_token(value) for value in query):
            return await self.app(scope, receive, self._setting_cookie(send))
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization.lower().startswith(TOKEN_SCHEME) and self._is_token(authorization[len(TOKEN_SCHEME):]):
            return await self.app(scope, receive, send)
        if self._is_token(_cookie(headers.get(b"cookie", b"").decode("latin-1"), self.cookie)):
            return await self.app(scope, receive, send)
        await refuse(scope, send, 401, "this nanogpt-view needs its token: open the URL it printed at start-up "
                                       "(ending in ?token=...), or send the header 'Authorization: token TOKEN'")

    def _is_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.strip().encode("utf-8", "replace"), self.token)

    def _setting_cookie(self, send):
        """``send`` that adds the token cookie to an HTTP response: the page's later requests carry it."""
        cookie = f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return with_cookie


class PublicApiOnly:
    """ASGI middleware: a by-name call of any endpoint outside ``public`` gets 404."""

    def __init__(self, app, public: frozenset[str]):
        self.app = app
        self.public = public

    async def __call__(self, scope, receive, send):
        named = NAMED_ROUTE.match(scope.get("path", "")) if scope["type"] == "http" else None
        if named is None or named.group(1) in self.public:
            return await self.app(scope, receive, send)
        await refuse(scope, send, 404, f"no public endpoint {named.group(1)!r}: the API offers "
                                       f"{', '.join('/' + name for name in sorted(self.public))}")


def _cookie(header: str, name: str) -> str | None:
    try:
        morsel = SimpleCookie(header).get(name)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


async def refuse(scope, send, status: int, reason: str) -> None:
    """A plain-text refusal (HTTP) or a policy-violation close (WebSocket)."""
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    body = f"{reason}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
