"""Who may talk to the UI: this machine's browser, holding this session's token.

The server binds 127.0.0.1, but a web page the user visits can still make the browser send requests there, and a
DNS-rebinding page can make them look same-origin. So every request must (1) name a local Host (a rebinding
page's requests carry its own domain), (2) carry the per-session token: in the URL the UI opened (which sets a
SameSite=Strict, HttpOnly cookie and redirects to a clean address), in that cookie, or in the `X-Falcon-Token`
header; and (3) for anything but GET, come from no other Origin.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from starlette.datastructures import URL, Headers, QueryParams
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_HEADER = "x-falcon-token"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(token: str) -> str:
    # Cookies ignore the port: two UIs on one machine must not overwrite each other's cookie.
    return "falcon_desktop_" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:10]


def hostname(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LocalSessionGuard:
    """ASGI middleware enforcing the three rules above; 400 for a foreign Host or Origin, 403 without the token."""

    def __init__(self, app: ASGIApp, token: str, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_name(token)
        self.hosts = LOCAL_HOSTS | {hostname(host) for host in extra_hosts}

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode("utf-8"), self.token.encode("utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if hostname(headers.get("host", "")) not in self.hosts:
            await PlainTextResponse("Host not allowed: open the UI through 127.0.0.1 or localhost.", 400)(scope, receive, send)
            return
        origin = headers.get("origin")
        if scope.get("method", "GET") != "GET" and origin and hostname(URL(origin).netloc) not in self.hosts:
            await PlainTextResponse("Cross-origin request refused.", 400)(scope, receive, send)
            return
        if self._valid(QueryParams(scope.get("query_string", b"")).get("token")):
            response = RedirectResponse(scope.get("path") or "/", 303)  # the token leaves the address bar
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        cookies = _cookies(headers)
        if self._valid(cookies.get(self.cookie)) or self._valid(headers.get(TOKEN_HEADER)):
            await self.app(scope, receive, send)
            return
        await PlainTextResponse("This UI needs its session token: open the address `falcon-desktop ui` printed.",
                                403)(scope, receive, send)


def _cookies(headers: Headers) -> dict[str, str]:
    found = {}
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            found[name] = value
    return found
