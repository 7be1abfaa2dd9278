"""The CLI's side of the ``/v1/events`` websocket (trio-websocket): opening the stream and
following it across supervisor restarts. Apart from ``client`` so that the commands that only
send JSON requests (``status``, ``stop``) never read this code at start-up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from jetpack import errors

if TYPE_CHECKING:
    import trio
    import trio_websocket

    from jetpack.cli.client import ControlClient
    from jetpack.events import EventFilter

# Close codes of /v1/events (supervisor/api.py and docs/events.md).
CLOSE_BAD_REQUEST = 4400
CLOSE_SINCE_EXPIRED = 4410

RECONNECT_DELAY = 0.1
"""First wait before reconnecting; doubles on each failure up to ``RECONNECT_MAX_DELAY``."""
RECONNECT_MAX_DELAY = 2.0
RECONNECT_GIVE_UP = 60.0
"""Seconds without reaching the supervisor after which a follower gives up."""


class StreamClosed(Exception):  # noqa: N818  # the websocket's own close, not a failure
    """The server closed the event stream with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"event stream closed ({code}): {reason}")
        self.code = code
        self.reason = reason


@asynccontextmanager
async def open_events(
    client: ControlClient, since: int | str | None, event_filter: EventFilter | None = None,
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
        stream = await trio.open_unix_socket(client.socket_path)
    except OSError as exc:
        raise client.unreachable(exc) from None
    try:
        async with stream, trio.open_nursery() as nursery:
            ws = await _handshake(client, nursery, stream, resource)
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
    client: ControlClient, nursery: trio.Nursery, stream: trio.SocketStream, resource: str
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
        raise client.unreachable(exc) from None


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


__all__ = ["CLOSE_BAD_REQUEST", "CLOSE_SINCE_EXPIRED", "EventStream", "StreamClosed",
           "follow_events", "open_events"]
