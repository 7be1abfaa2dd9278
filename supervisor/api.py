"""The control API as one ASGI app: a small JSON router and the ``/v1/events`` websocket.

Other supervisor modules register their routes on a ``Router`` (``router.add("POST",
"/v1/pods/{pod}/start", handler)``); errors from the ``jetpack.errors`` hierarchy become JSON
error bodies that the CLI's client turns back into the same exception class.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import trio

from jetpack import __version__, errors
from jetpack.events import EventFilter, SinceExpired, parse_since
from jetpack.log import get_logger
from jetpack.supervisor.events import Entry, EventHub, HubClosed, SlowConsumer, Subscription

MAX_BODY = 1 << 20
"""Largest request body accepted (bytes); the control API carries small JSON documents."""

# Websocket close codes of /v1/events (docs/events.md lists them for client writers).
CLOSE_GOING_AWAY = 1001  # the supervisor is shutting down: reconnect with since
CLOSE_INTERNAL = 1011  # the server failed (the state database): reconnect with since
CLOSE_BAD_REQUEST = 4400  # a malformed query parameter: do not retry unchanged
CLOSE_SLOW_CONSUMER = 4408  # the subscriber's queue overflowed: reconnect with since
CLOSE_SINCE_EXPIRED = 4410  # since is no longer in the log: re-list state, then follow

STREAM_PARAMS = frozenset({"since", "pod", "type", "app", "token"})

log = get_logger(component="api")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# --------------------------------------------------------------------------- router


@dataclass
class Request:
    """What a route handler sees of an HTTP request."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.UsageError(f"request body is not JSON: {exc}") from None

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query parameter."""
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    """A JSON response; ``body`` is serialized with ``json.dumps``, except ``bytes``, sent as
    they are with ``content_type`` (``/metrics``' text exposition)."""

    body: Any = None
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"


Write = Callable[[bytes], Awaitable[None]]


@dataclass
class StreamResponse:
    """A streamed answer (HTTP/1.1 chunked): ``produce(write)`` sends its body in pieces as
    they come. A client that disconnects cancels ``produce``; what must happen even then
    (``run --rm`` destroying its pod) belongs in its shielded ``finally``."""

    produce: Callable[[Write], Awaitable[None]]
    content_type: bytes = b"application/x-ndjson"
    status: int = 200


Handler = Callable[[Request], Awaitable[Any]]
SocketHandler = Callable[[Any, Any, Any, dict[str, str]], Awaitable[None]]
"""A route: returns a ``Response`` or any JSON-serializable value (sent with status 200)."""


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler


def _template(template: str) -> re.Pattern[str]:
    """``/v1/pods/{pod}`` as a pattern with a named group per ``{parameter}``."""
    return re.compile(
        "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
    )


class Router:
    """Method + path template (``/v1/pods/{pod}``) to handler; first registration wins."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._sockets: list[tuple[re.Pattern[str], SocketHandler]] = []
        self._socket_templates: list[str] = []

    def add_websocket(self, template: str, handler: SocketHandler) -> None:
        """A websocket endpoint (``/v1/pods/{pod}/attach``); the handler gets the ASGI scope,
        receive, send and the path parameters, and owns the connection."""
        self._sockets.append((_template(template), handler))
        self._socket_templates.append(template)

    def endpoints(self) -> list[tuple[str, str]]:
        """Every registered ``(method, template)``; a websocket's method is ``WEBSOCKET``
        (``/v1/events``, served by ``ControlApp`` itself, is not a route)."""
        return [(route.method, route.template) for route in self._routes] + \
            [("WEBSOCKET", template) for template in self._socket_templates]

    def match_websocket(self, path: str) -> tuple[SocketHandler, dict[str, str]] | None:
        for pattern, handler in self._sockets:
            found = pattern.match(path)
            if found is not None:
                return handler, found.groupdict()
        return None

    def add(self, method: str, template: str, handler: Handler) -> None:
        for route in self._routes:
            if route.method == method.upper() and route.template == template:
                raise ValueError(f"route {method} {template} is already registered")
        pattern = _template(template)
        self._routes.append(Route(method.upper(), template, pattern, handler))

    def route(self, method: str, template: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``add``."""

        def register(handler: Handler) -> Handler:
            self.add(method, template, handler)
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = []
        for route in self._routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == method.upper():
                return route.handler, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(path, allowed)
        raise errors.NotFoundError(f"no API endpoint {path}")


class MethodNotAllowed(errors.UsageError):
    """A known path asked with a method it does not accept (HTTP 405)."""

    def __init__(self, path: str, allowed: list[str]) -> None:
        super().__init__(f"{path} accepts {', '.join(sorted(set(allowed)))}")


PEER_UID: ContextVar[int | None] = ContextVar("PEER_UID", default=None)
"""The uid of the process at the other end of the connection a request came on (the control
socket's ``SO_PEERCRED``), set by the server for each connection; None on the HTTP listener."""


def status_of(exc: errors.JetpackError) -> int:
    """The HTTP status an error from the hierarchy is answered with."""
    if isinstance(exc, MethodNotAllowed):
        return 405
    if isinstance(exc, errors.PermissionDeniedError):
        return 403
    if isinstance(exc, (errors.UsageError, errors.ValidationError, errors.ConfigError)):
        return 400
    if isinstance(exc, errors.NotFoundError):
        return 404
    if isinstance(exc, (errors.ConflictError, errors.AmbiguousError)):
        return 409
    return 500


def error_body(exc: errors.JetpackError) -> dict[str, Any]:
    """``{"error", "hint", "kind"}``: ``kind`` names the class in ``jetpack.errors``."""
    return {"error": exc.message, "hint": exc.hint, "kind": _public_kind(exc)}


def _public_kind(exc: errors.JetpackError) -> str:
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__:
            return cls.__name__
    return "JetpackError"


def core_router(hub: EventHub) -> Router:
    """The routes every supervisor answers; other modules add theirs to the same router."""
    router = Router()

    async def ping(request: Request) -> Any:
        del request
        return {"ok": True}

    async def info(request: Request) -> Any:
        del request
        return {
            "version": __version__,
            "pid": os.getpid(),
            "events": {"last_seq": hub.last_published, "subscribers": hub.subscriber_count},
        }

    router.add("GET", "/v1/ping", ping)
    router.add("GET", "/v1/info", info)
    return router


# --------------------------------------------------------------------------- the app


class ControlApp:
    """The ASGI application served on the control socket, and on the HTTP listener behind
    ``listener.Authenticated`` (which checks the token before any of this runs)."""

    def __init__(
        self,
        router: Router,
        hub: EventHub,
        *,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.router = router
        self.hub = hub
        self.heartbeat_interval = heartbeat_interval
        self._subscriptions: set[Subscription] = set()
        self._closing = False

    def shutdown(self) -> None:
        """End every event stream with 1001 (resume with since) and refuse new ones."""
        self._closing = True
        for subscription in list(self._subscriptions):
            subscription.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    # ----------------------------------------------------------------------- HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _respond(send, Response({"error": "request body too large"}, 413))
                return
            if not message.get("more_body", False):
                break
        request = Request(
            method=scope["method"],
            path=scope["path"],
            params={},
            query=parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True),
            headers=_headers(scope),
            body=bytes(body),
        )
        response = await self._dispatch(request)
        if isinstance(response, StreamResponse):
            await _stream_response(receive, send, response)
        else:
            await _respond(send, response)

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        try:
            handler, request.params = self.router.match(request.method, request.path)
            result = await handler(request)
        except errors.JetpackError as exc:
            return Response(error_body(exc), status_of(exc))
        except Exception as exc:  # a bug in a handler must not kill the server
            log.exception("API handler failed", method=request.method, path=request.path)
            return Response({"error": f"internal error: {exc}", "hint": None,
                             "kind": "JetpackError"}, 500)
        return result if isinstance(result, (Response, StreamResponse)) else Response(result)

    # ----------------------------------------------------------------------- websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if scope["path"] != "/v1/events":
            found = self.router.match_websocket(scope["path"])
            if found is None:
                await reject_websocket(send, 404, f"no websocket endpoint {scope['path']}")
                return
            handler, params = found
            await handler(scope, receive, send, params)
            return
        if self._closing:
            await reject_websocket(send, 503, "supervisor shutting down")
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        code, reason = await self._stream(query, receive, send)
        await send({"type": "websocket.close", "code": code, "reason": reason})

    async def _stream(
        self, query: dict[str, list[str]], receive: Receive, send: Send
    ) -> tuple[int, str]:
        try:
            since, event_filter = await self._parse_stream_query(query)
            async with self.hub.subscribe(
                since, event_filter, heartbeat_interval=self.heartbeat_interval
            ) as subscription:
                self._subscriptions.add(subscription)
                try:
                    if self._closing:
                        subscription.close()
                    return await self._pump_until_closed(subscription, receive, send)
                finally:
                    self._subscriptions.discard(subscription)
        except (errors.UsageError, HubClosed, errors.StateError) as exc:
            return _close_for(exc)

    async def _parse_stream_query(
        self, query: dict[str, list[str]]
    ) -> tuple[int | None, EventFilter]:
        unknown = sorted(set(query) - STREAM_PARAMS)
        if unknown:
            raise errors.UsageError(f"unknown parameter {unknown[0]!r} (pod, type, app, since)")
        since: int | None = None
        if "since" in query:
            since = await self.hub.resolve_since(parse_since(query["since"][-1]))
        return since, EventFilter.from_query(query)

    async def _pump_until_closed(
        self, subscription: Subscription, receive: Receive, send: Send
    ) -> tuple[int, str]:
        """Send events and heartbeats until the subscription ends; a client that disconnects
        ends it too (its sends are no-ops from then on, so cancelling them is safe)."""
        outcome: tuple[int, str] = (1000, "")
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                nonlocal outcome
                try:
                    while True:
                        item = await subscription.next()
                        text = item.text if isinstance(item, Entry) else item.to_json()
                        await send({"type": "websocket.send", "text": text})
                except SlowConsumer as exc:
                    log.info("slow subscriber disconnected", position=exc.position)
                    outcome = (CLOSE_SLOW_CONSUMER, str(exc))
                except (HubClosed, errors.StateError) as exc:
                    outcome = _close_for(exc)
                nursery.cancel_scope.cancel()

            async def watch_client() -> None:
                while (await receive())["type"] != "websocket.disconnect":
                    pass  # clients have nothing to say on this endpoint
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            nursery.start_soon(watch_client)
        return outcome


def _close_for(exc: Exception) -> tuple[int, str]:
    """The close code and reason (at most 123 bytes) for a stream that ends with ``exc``."""
    if isinstance(exc, errors.UsageError):
        return CLOSE_BAD_REQUEST, exc.message[:123]
    if isinstance(exc, SinceExpired):
        return CLOSE_SINCE_EXPIRED, exc.close_reason
    if isinstance(exc, HubClosed):
        return CLOSE_GOING_AWAY, str(exc)
    log.error("event stream failed", error=str(exc))
    return CLOSE_INTERNAL, f"state database: {exc}"[:123]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _respond(send: Send, response: Response) -> None:
    if isinstance(response.body, bytes):
        payload = response.body
    else:
        payload = json.dumps(response.body, separators=(",", ":")).encode() + b"\n"
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(payload)).encode()),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _stream_response(receive: Receive, send: Send, response: StreamResponse) -> None:
    """Send ``response`` chunk by chunk until it ends or the client disconnects."""
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(b"content-type", response.content_type)]})

    async def write(data: bytes) -> None:
        if data:
            await send({"type": "http.response.body", "body": data, "more_body": True})

    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            try:
                await response.produce(write)
            except Exception:  # a bug in a producer must not kill the server
                log.exception("API stream failed")
            nursery.cancel_scope.cancel()

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass  # the request body was read before the handler ran
            nursery.cancel_scope.cancel()

        nursery.start_soon(produce)
        nursery.start_soon(watch_client)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def reject_websocket(send: Send, status: int, message: str) -> None:
    """Refuse a websocket handshake with an HTTP status and a plain-text reason."""
    body = (message + "\n").encode()
    await send({
        "type": "websocket.http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "websocket.http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
