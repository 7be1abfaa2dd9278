"""The CLI's client for the supervisor's control socket: JSON requests (``unixhttp``: HTTP/1.1
with only ``socket``, so a ``status`` or ``stop`` imports no trio, httpx, ssl or email), the
``/run`` output stream, and the ``/v1/events`` websocket (trio-websocket, imported when used);
errors translated to ``jetpack.errors``.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import asynccontextmanager, contextmanager

from jetpack import errors

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from typing import Any

    import trio
    import trio_websocket

    from jetpack.cli.unixhttp import Response
    from jetpack.events import EventFilter

NO_SUPERVISOR_HINT = (
    "start it with 'jetpack daemon' (or as a service: 'service jetpack start' on FreeBSD, "
    "'systemctl start jetpack' elsewhere)"
)

# Close codes of /v1/events (supervisor/api.py and docs/events.md).
CLOSE_BAD_REQUEST = 4400
CLOSE_SINCE_EXPIRED = 4410

RECONNECT_DELAY = 0.1
"""First wait before reconnecting; doubles on each failure up to ``RECONNECT_MAX_DELAY``."""
RECONNECT_MAX_DELAY = 2.0
RECONNECT_GIVE_UP = 60.0
"""Seconds without reaching the supervisor after which a follower gives up."""

REQUEST_TIMEOUT = 30.0


class NoSupervisorError(errors.SupervisorError):
    """No supervisor listens on the control socket (none there, or a stale one)."""


class StreamClosed(Exception):  # noqa: N818  # the websocket's own close, not a failure
    """The server closed the event stream with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"event stream closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class ControlClient:
    """Talks to the supervisor listening on ``socket_path``."""

    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket_path = os.fspath(socket_path)  # a str: pathlib is start-up time too

    # ----------------------------------------------------------------------- JSON API

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The decoded JSON answer; an error answer is raised as its ``jetpack.errors`` class.

        No timeout of its own (requests like ``stop`` take as long as they take): bound it
        with ``trio.fail_after`` where needed.
        """
        import httpx

        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://jetpack",
                                     timeout=None) as http:  # noqa: S113  # cancel scopes bound it
            try:
                response = await http.request(method, path, json=body, params=params)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
        return _decode(response.status_code, response.content)

    def request_sync(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
        timeout: float | None = REQUEST_TIMEOUT,
    ) -> Any:
        """``request`` for code that does not run trio (``timeout`` in seconds, or None)."""
        with self._exchange(method, path, body, params, timeout) as response:
            try:
                data = response.read()
            except OSError as exc:
                raise self._unreachable(exc) from None
        return _decode(response.status, data)

    def stream_sync(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The JSON lines of a streamed answer (``application/x-ndjson``), each as it arrives;
        an error answer (not streamed) is raised as ``request_sync`` raises it."""
        with self._exchange(method, path, body, params, None) as response:
            if response.status != 200 or \
                    not (response.getheader("content-type") or "").startswith(
                        "application/x-ndjson"):
                _decode(response.status, response.read())
                raise errors.SupervisorError(
                    f"the supervisor answered {path} with {response.status} without a stream")
            while True:
                try:
                    line = response.readline()
                except OSError as exc:
                    raise errors.SupervisorError(
                        f"lost the supervisor during {path}: {exc}") from None
                if not line:
                    return
                yield json.loads(line)

    @contextmanager
    def _exchange(
        self, method: str, path: str, body: Any, params: dict[str, Any] | None,
        timeout: float | None,
    ) -> Iterator[Response]:
        """One request on a fresh connection, closed when the caller is done with the answer."""
        from jetpack.cli.unixhttp import UnixHTTPConnection

        target = _target(path, params)
        headers = {"Host": "jetpack", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            try:
                connection.request(method, target, body=payload, headers=headers)
                response = connection.getresponse()
            except OSError as exc:  # unixhttp.ProtocolError included
                raise self._unreachable(exc) from None
            yield response
        finally:
            connection.close()

    # ----------------------------------------------------------------------- events

    @asynccontextmanager
    async def open_events(
        self, since: int | str | None, event_filter: EventFilter | None = None,
    ) -> AsyncIterator[EventStream]:
        """A websocket on ``/v1/events`` (``since``: a seq, an RFC 3339 time, or ``None`` for
        only new events; no filter: every event)."""
        from urllib.parse import urlencode

        import trio

        items: list[tuple[str, str]] = [] if since is None else [("since", str(since))]
        if event_filter is not None:
            items += event_filter.query_items()
        resource = "/v1/events" + (f"?{urlencode(items)}" if items else "")
        try:
            stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise self._unreachable(exc) from None
        try:
            async with stream, trio.open_nursery() as nursery:
                ws = await self._handshake(nursery, stream, resource)
                try:
                    yield EventStream(ws)
                finally:
                    with trio.move_on_after(1) as cleanup:
                        cleanup.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery only runs trio-websocket's reader; what the caller's body raised
            # (StreamClosed, SupervisorError, Cancelled) is passed on as itself.
            if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
                raise
            raise group.exceptions[0] from None

    async def _handshake(
        self, nursery: trio.Nursery, stream: trio.SocketStream, resource: str
    ) -> trio_websocket.WebSocketConnection:
        import trio
        import trio_websocket

        try:
            return await trio_websocket.wrap_client_stream(nursery, stream, "localhost", resource)
        except trio_websocket.ConnectionRejected as exc:
            body = (exc.body or b"").decode(errors="replace").strip()
            raise errors.SupervisorError(
                f"the supervisor refused the event stream ({exc.status_code}): {body}"
            ) from None
        except (trio_websocket.HandshakeError, trio.BrokenResourceError, OSError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> errors.SupervisorError:
        """Why the socket could not be used, phrased for the user."""
        path = self.socket_path
        if not os.path.exists(path):
            return NoSupervisorError(
                f"no supervisor is running (no control socket at {path})", hint=NO_SUPERVISOR_HINT
            )
        if not os.access(path, os.W_OK):
            return errors.SupervisorError(
                f"permission denied on the control socket {path}",
                hint="run as root, or as a member of the group named by supervisor.group",
            )
        if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
            return NoSupervisorError(
                f"no supervisor is running (stale control socket at {path})",
                hint=NO_SUPERVISOR_HINT,
            )
        return errors.SupervisorError(f"cannot reach the supervisor on {path}: {exc}")


class EventStream:
    """An open ``/v1/events`` websocket: text messages until the server closes it."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> str:
        import trio_websocket

        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            raise StreamClosed(reason.code if reason else 1006,
                               (reason.reason if reason else None) or "") from None
        return message if isinstance(message, str) else message.decode()


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")


def _target(path: str, params: dict[str, Any] | None) -> str:
    """The request target: ``path`` percent-encoded, then the query (urllib.parse only when
    there is something to encode: it is start-up time ``status`` would pay)."""
    if not params and _PLAIN.issuperset(path):
        return path
    from urllib.parse import quote, urlencode

    return quote(path) + (f"?{urlencode(params)}" if params else "")


def _decode(status: int, data: bytes) -> Any:
    try:
        payload = json.loads(data)
    except ValueError:
        raise errors.SupervisorError(
            f"the supervisor answered {status} with a body that is not JSON"
        ) from None
    if 200 <= status < 300:
        return payload
    raise error_from(payload, f"request failed with status {status}")


def error_from(payload: Any, fallback: str) -> errors.JetpackError:
    """The exception an error body (``{"error", "hint", "kind"}``) stands for."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    cls = getattr(errors, kind, None) if isinstance(kind, str) else None
    message = payload.get("error") if isinstance(payload, dict) else None
    hint = payload.get("hint") if isinstance(payload, dict) else None
    text = str(message or fallback)
    if (
        isinstance(cls, type)
        and issubclass(cls, errors.JetpackError)
        and cls not in (errors.ValidationError, errors.AmbiguousError)  # other signatures
    ):
        return cls(text, hint=hint)
    return errors.SupervisorError(text, hint=hint)


# --------------------------------------------------------------------------- following


async def follow_events(
    client: ControlClient,
    since: int | str | None,
    event_filter: EventFilter,
    emit: Callable[[str, dict[str, Any]], None],
    *,
    give_up_after: float = RECONNECT_GIVE_UP,
) -> None:
    """Call ``emit(text, event)`` for every event, in order, exactly once, until cancelled.

    A dropped connection or a restarting supervisor is survived: the follower reconnects with
    backoff and resumes after the last seq it emitted (or a later heartbeat bookmark). Only
    the first connection's failure, a ``since`` the log no longer holds, or ``give_up_after``
    seconds without a supervisor end it with an error.
    """
    import trio

    position = since
    connected = False
    delay = RECONNECT_DELAY
    failing_since: float | None = None
    while True:
        try:
            async with client.open_events(position, event_filter) as stream:
                connected, delay, failing_since = True, RECONNECT_DELAY, None
                while True:
                    text = await stream.receive()
                    message = json.loads(text)
                    if message.get("type") == "heartbeat":
                        position = max(_as_seq(position), int(message["last_seq"]))
                        continue
                    emit(text, message)
                    position = int(message["seq"])
        except StreamClosed as exc:
            if exc.code == CLOSE_SINCE_EXPIRED:
                raise errors.StateError(
                    f"the event log no longer holds what follows: {exc.reason}",
                    hint="re-list with 'jetpack list', then follow with 'jetpack events'",
                ) from None
            if exc.code == CLOSE_BAD_REQUEST:
                raise errors.UsageError(exc.reason) from None
            lost = f"event stream closed: {exc.reason or exc.code}"
        except errors.SupervisorError as exc:
            if not connected:
                raise
            lost = exc.message
        now = trio.current_time()
        failing_since = now if failing_since is None else failing_since
        if now - failing_since > give_up_after:
            raise errors.SupervisorError(
                f"lost the supervisor for more than {give_up_after:g}s ({lost})",
                hint=f"resume with 'jetpack events --since {_as_seq(position)}'",
            )
        print(f"jetpack: {lost}; reconnecting", file=sys.stderr, flush=True)
        await trio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY)


def _as_seq(position: int | str | None) -> int:
    return position if isinstance(position, int) else 0


__all__ = ["ControlClient", "EventStream", "NoSupervisorError", "StreamClosed", "error_from",
           "follow_events"]
