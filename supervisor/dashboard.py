"""The dashboard at ``/ui`` on the HTTP listener: static files shipped as package data (no build
step, nothing fetched from the network), and the routes it needs besides the control API.

The page reads ``GET /v1/pods``, follows ``/v1/events`` over a websocket and posts
start/stop/restart with the ``X-Jetpack-CSRF`` header (listener.py explains why).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from jetpack.errors import UsageError
from jetpack.supervisor.api import Receive, Request, Router, Scope, Send
from jetpack.supervisor.hypercorn_adapter import ASGIApp
from jetpack.supervisor.stage1_runtime import app_log_path

if TYPE_CHECKING:
    from jetpack.supervisor.pods import PodManager
    from jetpack.supervisor.server import ServerHandle

PREFIX = "/ui"
TAIL_BYTES = 64 << 10
"""Most bytes of each app's log the tail reads."""
MAX_TAIL_LINES = 1000

_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}
# Everything the page loads is its own; frames are refused (the buttons must not be clickjacked).
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _load_files() -> dict[str, tuple[bytes, bytes]]:
    """``/ui/NAME`` → (content type, body) for every file of the package's ``ui`` folder."""
    folder = resources.files("jetpack.supervisor").joinpath("ui")
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[f"{PREFIX}/{entry.name}"] = (_TYPES[suffix], entry.read_bytes())
    files[f"{PREFIX}/"] = files[f"{PREFIX}/index.html"]
    return files


class Dashboard:
    """ASGI: ``/ui/...`` from package data, everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._files = _load_files()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(dict(scope), receive, send)
            return
        if path == PREFIX:
            await _send(send, 308, [(b"location", f"{PREFIX}/".encode())], b"")
            return
        found = self._files.get(path)
        if found is None:
            await _send(send, 404, [(b"content-type", b"text/plain")], b"not found\n")
        elif scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, [(b"allow", b"GET, HEAD")], b"")
        else:
            content_type, body = found
            await _send(send, 200, [(b"content-type", content_type), *_SECURITY_HEADERS],
                        b"" if scope["method"] == "HEAD" else body, len(body))


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                length: int | None = None) -> None:
    size = len(body) if length is None else length
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(size).encode())]})
    await send({"type": "http.response.body", "body": body})


def add_dashboard_routes(router: Router, manager: PodManager,
                         server: Callable[[], ServerHandle | None]) -> None:
    """``GET /v1/dashboard`` (the URL ``jetpack dashboard`` prints) and ``GET
    /v1/pods/{pod}/logs?lines=N`` (the last lines of each app's log)."""

    async def dashboard(request: Request) -> Any:
        del request
        handle = server()
        # The URL carries the token: the unix socket is root's (or supervisor.group's), and a
        # listener client has shown the token to get here.
        return {"url": handle.dashboard_url if handle is not None else None}

    async def logs(request: Request) -> Any:
        text = request.arg("lines") or "100"
        if not text.isdigit() or not 0 < int(text) <= MAX_TAIL_LINES:
            raise UsageError(f"lines must be between 1 and {MAX_TAIL_LINES}, not {text!r}")
        pod = await manager.resolve(request.params["pod"])
        paths = {app.name: app_log_path(manager.config, pod.uuid, app.name) for app in pod.apps}

        def read() -> dict[str, str]:
            return {name: _tail(path, int(text)) for name, path in paths.items()}

        return {"pod": pod.uuid, "apps": await trio.to_thread.run_sync(read)}

    router.add("GET", "/v1/dashboard", dashboard)
    router.add("GET", "/v1/pods/{pod}/logs", logs)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return ""
    if len(data) == TAIL_BYTES:
        data = data.partition(b"\n")[2]  # the first line is likely cut
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
