"""The optional HTTP listener (``http.listen``): its settings, TLS, and the one authentication
layer that wraps the whole control app on TCP, so every route (present or added later) is covered.

A request is let through when it carries ``Authorization: Bearer TOKEN`` or the session cookie
the dashboard's ``?token=`` link sets; the unix socket is not wrapped (file permissions guard it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jetpack.config import Config
from jetpack.errors import ConfigError
from jetpack.supervisor.api import Receive, Scope, Send, reject_websocket
from jetpack.supervisor.hypercorn_adapter import ASGIApp

COOKIE = "jetpack_token"
CSRF_HEADER = "x-jetpack-csrf"
"""Unsafe requests authenticated by the cookie must carry this header (any value): a cross-site
form cannot set it, and a cross-site script needs a CORS preflight that is never granted."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class ListenerSettings:
    """``http.*`` once checked: where to listen, the token, and TLS."""

    host: str
    port: int
    token: str
    generated: bool  # no http.token set (loopback only): a fresh token for this run
    tls: ssl.SSLContext | None

    @classmethod
    def from_config(cls, config: Config) -> ListenerSettings | None:
        """None when ``http.listen`` is empty. Refuses a non-loopback address without a token
        and half a TLS setting; reads the certificate (blocking: call it in a thread)."""
        listen = config["http.listen"]
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        token = config["http.token"]
        generated = False
        if not token:
            if not is_loopback(host):
                raise ConfigError(
                    f"http.listen {listen} is reachable from other hosts but http.token is empty",
                    hint="set http.token to a long random secret (e.g. 'openssl rand -hex 32'), "
                         "or listen on 127.0.0.1",
                )
            token, generated = secrets.token_urlsafe(32), True
        return cls(host, int(port), token, generated, _tls_context(config))

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


def is_loopback(host: str) -> bool:
    """Only literal loopback addresses and ``localhost`` count; any other name might resolve
    to a public address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_context(config: Config) -> ssl.SSLContext | None:
    cert, key = config["http.tls-cert"], config["http.tls-key"]
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("http.tls-cert and http.tls-key go together: set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http.tls-cert {cert} / http.tls-key {key}: {exc}") from None
    return context


def dashboard_url(settings: ListenerSettings, address: tuple[str, int]) -> str:
    """The dashboard's URL with its one-time ``?token=`` (what ``jetpack dashboard`` prints)."""
    host, port = address
    if ":" in host:
        host = f"[{host}]"
    return f"{settings.scheme}://{host}:{port}/ui/?{urlencode({'token': settings.token})}"


class Authenticated:
    """ASGI middleware: every HTTP request and websocket handshake must carry the token."""

    def __init__(self, app: ASGIApp, token: str, *, secure: bool) -> None:
        self.app = app
        self._token = token.encode()
        self._secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(dict(scope), receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        offered_in_query = [v for k, v in query if k == "token"]
        if kind == "http" and offered_in_query and scope["method"] in ("GET", "HEAD"):
            # The dashboard link: trade the token in the URL for a cookie, then drop it from
            # the address bar (and from history, bookmarks and Referer headers).
            if self._matches(offered_in_query[-1]):
                await self._redirect_with_cookie(scope, send, query)
            else:
                await _unauthorized(send, "the token in the link is wrong")
            return
        bearer = _bearer(headers)
        cookie = _cookie(headers)
        if bearer is not None and self._matches(bearer):
            await self.app(dict(scope), receive, send)
            return
        if kind == "websocket" and offered_in_query and self._matches(offered_in_query[-1]):
            # Websocket clients that cannot set headers (documented since events.listen).
            await self.app(dict(scope), receive, send)
            return
        if bearer is None and cookie is not None and self._matches(cookie):
            refusal = _cross_site(scope, headers)
            if refusal is None:
                await self.app(dict(scope), receive, send)
                return
            if kind == "websocket":
                await reject_websocket(send, 403, refusal)
            else:
                await _respond(send, 403, {"error": refusal, "hint": None,
                                           "kind": "SupervisorError"})
            return
        message = "wrong token" if (bearer or cookie or offered_in_query) else \
            "this listener needs a token"
        if kind == "websocket":
            await reject_websocket(send, 401, message)
        else:
            await _unauthorized(send, message)

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._token)

    async def _redirect_with_cookie(self, scope: Scope, send: Send,
                                    query: list[tuple[str, str]]) -> None:
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        location = scope["path"] + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self._token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        if self._secure:
            cookie += "; Secure"
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1")),
            (b"set-cookie", cookie.encode()),
            (b"cache-control", b"no-store"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-length", b"0"),
        ]})
        await send({"type": "http.response.body", "body": b""})


def _bearer(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip()


def _cookie(headers: dict[str, str]) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def _cross_site(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why a cookie-authenticated request may come from another site (None: it does not).

    The cookie is SameSite=Strict already; these checks hold even in a browser that ignores it.
    """
    origin = headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != headers.get("host", ""):
        return f"cross-origin request from {origin} refused"
    if scope["type"] == "http" and scope["method"] not in SAFE_METHODS \
            and CSRF_HEADER not in headers:
        return f"a {scope['method']} with the session cookie needs the X-Jetpack-CSRF header"
    return None


async def _unauthorized(send: Send, message: str) -> None:
    await _respond(send, 401, {
        "error": message,
        "hint": "send 'Authorization: Bearer TOKEN' (http.token), or open the URL "
                "'jetpack dashboard' prints",
        "kind": "SupervisorError",
    }, [(b"www-authenticate", b'Bearer realm="jetpack"')])


async def _respond(send: Send, status: int, body: dict[str, Any],
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]})
    await send({"type": "http.response.body", "body": payload})
