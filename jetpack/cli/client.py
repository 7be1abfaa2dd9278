"""The CLI's client for the supervisor's control socket: JSON requests (``unixhttp``: HTTP/1.1
with only ``socket``, so a ``status`` or ``stop`` imports no trio, httpx, ssl or email), the
``/run`` output stream, and the ``/v1/events`` websocket (``eventclient``, read only when
used); errors translated to ``jetpack.errors``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from jetpack import errors

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractAsyncContextManager
    from typing import Any

    from jetpack.cli.eventclient import (
        CLOSE_BAD_REQUEST,
        CLOSE_SINCE_EXPIRED,
        EventStream,
        StreamClosed,
        follow_events,
    )
    from jetpack.cli.unixhttp import ReplyStream
    from jetpack.events import EventFilter

NO_SUPERVISOR_HINT = (
    "start it with 'jetpack daemon' (or as a service: 'service jetpack start' on FreeBSD, "
    "'systemctl start jetpack' elsewhere)"
)

REQUEST_TIMEOUT = 30.0


class NoSupervisorError(errors.SupervisorError):
    """No supervisor listens on the control socket (none there, or a stale one)."""


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
                raise self.unreachable(exc) from None
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
                raise self.unreachable(exc) from None
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
    ) -> Iterator[ReplyStream]:
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
                raise self.unreachable(exc) from None
            yield response
        finally:
            connection.close()

    # ----------------------------------------------------------------------- events

    def open_events(
        self, since: int | str | None, event_filter: EventFilter | None = None,
    ) -> AbstractAsyncContextManager[EventStream]:
        """A websocket on ``/v1/events`` (``since``: a seq, an RFC 3339 time, or ``None`` for
        only new events; no filter: every event): ``eventclient.open_events``."""
        from jetpack.cli.eventclient import open_events

        return open_events(self, since, event_filter)

    def unreachable(self, exc: BaseException) -> errors.SupervisorError:
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


_MOVED = ("CLOSE_BAD_REQUEST", "CLOSE_SINCE_EXPIRED", "EventStream", "StreamClosed",
          "follow_events")


def __getattr__(name: str) -> object:
    """The websocket side, still importable from here (it lives in ``eventclient``)."""
    if name in _MOVED:
        from jetpack.cli import eventclient

        return getattr(eventclient, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CLOSE_BAD_REQUEST", "CLOSE_SINCE_EXPIRED", "ControlClient", "EventStream",
           "NoSupervisorError", "StreamClosed", "error_from", "follow_events"]
