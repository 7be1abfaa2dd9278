"""The appc metadata service as an ASGI app, and ``serve`` to run it in the supervisor's loop.

Requests are answered from a ``PodDirectory`` held in memory by the supervisor: no disk read per
request. A request is answered only when its source address belongs to a running pod and its
path carries that pod's token; everything else is 403 with a short reason.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from jetpack.mds.tokens import sign, tokens_equal, verify

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RATE = 20.0
"""Requests per second one pod may make on average (the MDS serves occasional lookups)."""
BURST = 40
"""Requests one pod may make at once after being quiet."""
MAX_DELAY = 2.0
"""Seconds a request over its pod's budget may be held; one due later is refused with 429."""
MAX_BODY = 64 * 1024  # sign/verify forms; anything larger is refused with 413
BODY_TIMEOUT = 5.0  # a client trickling its body (slowloris) is cut off after this long
TEXT = b"text/plain; charset=us-ascii"
JSON = b"application/json"


@dataclass(frozen=True)
class AppMetadata:
    image_id: str
    image_manifest: str  # the original image manifest, JSON text
    annotations: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PodMetadata:
    uuid: str
    token: str
    manifest: str  # the reified pod manifest, JSON text
    annotations: list[dict[str, str]] = field(default_factory=list)
    apps: Mapping[str, AppMetadata] = field(default_factory=dict)


class PodDirectory(Protocol):
    """What the supervisor provides: the running pod that owns a source address (async: an
    entry may have to be read from the state database, which never happens on the loop)."""

    async def pod_by_address(self, address: str) -> PodMetadata | None: ...


class StaticDirectory:
    """A dict-backed directory (the supervisor keeps one up to date; tests fill one directly)."""

    def __init__(self) -> None:
        self.by_address: dict[str, PodMetadata] = {}

    async def pod_by_address(self, address: str) -> PodMetadata | None:
        return self.by_address.get(address)


class PodRateLimit:
    """A budget per pod (GCRA: ``rate`` requests/s, ``burst`` at once), so that pods hammering
    the metadata service cannot take the supervisor's loop from the control API and from other
    pods. Slow-consumer policy: a request over its pod's budget waits for its turn (a sleeping
    task costs the loop nothing); one whose turn is more than ``max_delay`` away is refused at
    once (429), so held requests stay bounded by the pod's connections."""

    def __init__(self, rate: float = RATE, burst: int = BURST, max_delay: float = MAX_DELAY
                 ) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.max_delay = max_delay
        self._due: dict[str, float] = {}  # pod -> theoretical arrival time of its next request

    async def admit(self, pod: str) -> bool:
        """Wait for ``pod``'s turn; False (at once) if it is more than ``max_delay`` away."""
        now = trio.current_time()
        due = max(self._due.get(pod, now), now)
        wait = due - self.tolerance - now
        if wait > self.max_delay:
            return False
        self._due[pod] = due + self.interval
        if len(self._due) > 4096:  # forget pods whose budget is whole again (bounded memory)
            self._due = {k: v for k, v in self._due.items() if v > now}
        if wait > 0:
            await trio.sleep(wait)
        return True


class MetadataService:
    """ASGI application for ``/{token}/acMetadata/v1/...``."""

    def __init__(self, directory: PodDirectory, signing_key: bytes,
                 limit: PodRateLimit | None = None) -> None:
        self.directory = directory
        self.signing_key = signing_key
        self.on_response: Callable[[int], None] | None = None
        """Told every answer's status (``jetpack_mds_requests_total{code}``)."""
        self.limit = limit if limit is not None else PodRateLimit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, ctype, body = await self.handle(scope, receive)
        if self.on_response is not None:
            self.on_response(status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        client = scope.get("client") or ("", 0)
        pod = await self.directory.pod_by_address(client[0])
        if pod is None:
            return _text(403, "forbidden: the request does not come from a running pod")
        parts = scope["path"].split("/")
        # ['', token, 'acMetadata', 'v1', ...rest]
        if len(parts) < 5 or not tokens_equal(parts[1], pod.token):
            return _text(403, "forbidden: missing or wrong pod token")
        if not await self.limit.admit(pod.uuid):
            return _text(429, "too many requests from this pod: slow down")
        if parts[2:4] != ["acMetadata", "v1"]:
            return _text(404, "not found")
        rest = [p for p in parts[4:] if p]
        method = scope["method"]
        if rest[:1] == ["pod"]:
            return await self.pod_endpoint(pod, rest[1:], method, receive)
        if rest[:1] == ["apps"] and len(rest) >= 3:
            if method != "GET":
                return _text(405, "method not allowed")
            return self.app_endpoint(pod, rest[1], rest[2:])
        return _text(404, "not found")

    async def pod_endpoint(
        self, pod: PodMetadata, rest: list[str], method: str, receive: Receive
    ) -> tuple[int, bytes, bytes]:
        if rest in (["annotations"], ["manifest"], ["uuid"]):
            if method != "GET":
                return _text(405, "method not allowed")
            if rest == ["uuid"]:
                return 200, TEXT, pod.uuid.encode("ascii")
            if rest == ["manifest"]:
                return 200, JSON, pod.manifest.encode()
            return 200, JSON, json.dumps(pod.annotations).encode()
        if rest in (["hmac", "sign"], ["hmac", "verify"]):
            if method != "POST":
                return _text(405, "method not allowed")
            form = await _read_form(receive)
            if form is None:
                return _text(413, "request body too large or too slow")
            content = form.get("content")
            if content is None:
                return _text(400, "missing form field: content")
            if rest[1] == "sign":
                return 200, TEXT, sign(self.signing_key, pod.uuid, content.encode()).encode()
            uuid, signature = form.get("uuid"), form.get("signature")
            if not uuid or not signature:
                return _text(400, "missing form field: uuid and signature are required")
            if verify(self.signing_key, uuid, content.encode(), signature):
                return _text(200, "")
            return _text(403, "signature does not verify")
        return _text(404, "not found")

    @staticmethod
    def app_endpoint(pod: PodMetadata, name: str, rest: list[str]) -> tuple[int, bytes, bytes]:
        app = pod.apps.get(urllib.parse.unquote(name))
        if app is None:
            return _text(404, f"no app named {name} in this pod")
        if rest == ["annotations"]:
            return 200, JSON, json.dumps(app.annotations).encode()
        if rest == ["image", "manifest"]:
            return 200, JSON, app.image_manifest.encode()
        if rest == ["image", "id"]:
            return 200, TEXT, app.image_id.encode("ascii")
        return _text(404, "not found")


def _text(status: int, message: str) -> tuple[int, bytes, bytes]:
    return status, TEXT, message.encode("ascii", "replace")


async def _read_form(receive: Receive) -> dict[str, str] | None:
    """The urlencoded body, or None when it exceeds MAX_BODY or BODY_TIMEOUT."""
    body = bytearray()
    with trio.move_on_after(BODY_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                return None
            if not message.get("more_body", False):
                pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"),
                                               keep_blank_values=True)
                return dict(pairs)
    return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve(
    service: MetadataService,
    bind: list[str],
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on ``bind`` (``["172.23.0.1:1104"]``); reports the bound addresses once serving."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    config = HypercornConfig()
    config.bind = bind
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 5
    config.read_timeout = int(BODY_TIMEOUT)
    config.h11_max_incomplete_size = 8 * 1024  # request line + headers
    config.graceful_timeout = 1
    trigger = shutdown.wait if shutdown is not None else None
    await hypercorn_serve(service, config, shutdown_trigger=trigger,  # type: ignore[arg-type]  # ASGI callable
                          mode="asgi", task_status=task_status)
