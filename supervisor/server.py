"""Serving the control app: hypercorn's trio HTTP/websocket protocol on the unix control socket
and on the optional HTTP listener (``http.listen``: token, TLS, the dashboard), with readiness,
permissions and graceful shutdown.

We run hypercorn's per-connection server under our own accept loop instead of
``hypercorn.trio.serve`` for one reason: hypercorn writes to the socket inside a shielded cancel
scope, so a client that stops reading would pin its connection forever and hold up every
graceful shutdown. Each connection's stream here gives every write a deadline
(``write_timeout``); a peer that accepts nothing for that long is disconnected. The hypercorn
internals this takes live in ``hypercorn_adapter`` alone.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import secrets
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from jetpack.config import Config
from jetpack.errors import ConfigError, SupervisorError
from jetpack.events import Retention
from jetpack.log import get_logger
from jetpack.supervisor.api import PEER_UID, ControlApp, Router, core_router
from jetpack.supervisor.dashboard import Dashboard
from jetpack.supervisor.events import RETENTION_INTERVAL, EventHub, run_retention
from jetpack.supervisor.hypercorn_adapter import ASGIApp, ConnectionServer
from jetpack.supervisor.listener import Authenticated, ListenerSettings, dashboard_url

WRITE_TIMEOUT = 10.0
"""Seconds a single write to a client may wait for the client to read before it is dropped."""

GRACEFUL_TIMEOUT = 5.0
"""Seconds open connections get to finish after a shutdown is triggered."""

BACKLOG = 128

log = get_logger(component="server")


@dataclass
class ServerHandle:
    """What ``serve`` reports once it serves: where, and how to stop it gracefully."""

    socket_path: Path
    tcp_address: tuple[str, int] | None
    app: ControlApp
    dashboard_url: str | None = None  # with its one-time ?token=
    _stop: trio.Event = field(default_factory=trio.Event, repr=False)

    def shutdown(self) -> None:
        """Stop accepting, end event streams with 1001, let requests finish, then return."""
        self._stop.set()


async def serve(
    config: Config,
    hub: EventHub,
    router: Router | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    write_timeout: float = WRITE_TIMEOUT,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
    heartbeat_interval: float | None = None,
    retention_interval: float = RETENTION_INTERVAL,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API and ``/v1/events`` until ``shutdown_trigger`` returns (or
    ``handle.shutdown()`` is called, or the task is cancelled).

    The socket file appears only once it accepts connections (bound and listening under a
    temporary name, then renamed into place) and is removed first thing on shutdown. The
    event log's retention runs here too.
    """
    socket_path = config.path("supervisor.socket")
    router = router if router is not None else core_router(hub)
    app = ControlApp(router, hub, heartbeat_interval=heartbeat_interval)
    settings = await trio.to_thread.run_sync(ListenerSettings.from_config, config)
    apps: list[ASGIApp] = [app]
    tcp_sock: socket.socket | None = None
    if settings is not None:
        tcp_sock = _bind_tcp(settings.host, settings.port)
        # One layer around everything the listener serves: routes added later are covered.
        apps.append(Authenticated(Dashboard(app), settings.token,
                                  secure=settings.tls is not None))
    try:
        unix_sock, temporary = await trio.to_thread.run_sync(
            _bind_unix, socket_path, config["supervisor.group"]
        )
    except BaseException:
        if tcp_sock is not None:
            tcp_sock.close()
        raise
    servers = [ConnectionServer(each_app, graceful_timeout=graceful_timeout,
                                errorlog=logging.getLogger("jetpack.hypercorn"))
               for each_app in apps]
    tcp_address = None
    url = None
    if tcp_sock is not None and settings is not None:
        host, port = tcp_sock.getsockname()[:2]
        tcp_address = (str(host), int(port))
        url = dashboard_url(settings, tcp_address)
    handle = ServerHandle(socket_path, tcp_address, app, url)
    served_inode: int | None = None
    socks = [unix_sock] if tcp_sock is None else [unix_sock, tcp_sock]
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as services:
                await services.start(
                    partial(run_retention, hub.db_path,
                            Retention.from_config(config), interval=retention_interval)
                )
                for sock, server in zip(socks, servers, strict=True):
                    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                    tls = settings.tls if settings is not None and sock is tcp_sock else None
                    handler = partial(_serve_connection, server, write_timeout, tls)
                    services.start_soon(
                        partial(trio.serve_listeners, handler, [listener],
                                handler_nursery=connections)
                    )
                served_inode = await trio.to_thread.run_sync(
                    _publish_socket, temporary, socket_path
                )
                log.info("control API serving", socket=str(socket_path),
                         http=f"{settings.scheme}://{tcp_address[0]}:{tcp_address[1]}"
                         if settings is not None and tcp_address is not None else None,
                         http_token_generated=settings.generated if settings else None)
                task_status.started(handle)
                await _first_of(handle._stop.wait, shutdown_trigger)
                # Shutdown: new clients find no socket (so they hear "no supervisor") ...
                await trio.to_thread.run_sync(_remove_socket, socket_path, served_inode)
                served_inode = None
                services.cancel_scope.cancel()
            # ... open streams end with 1001 (resume with since), requests get a deadline.
            app.shutdown()
            for server in servers:
                await server.terminate()
            connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
    finally:
        with trio.CancelScope(shield=True):
            if served_inode is not None:
                await trio.to_thread.run_sync(_remove_socket, socket_path, served_inode)
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            for sock in socks:
                sock.close()
        log.info("control API stopped", socket=str(socket_path))


async def _first_of(*waits: Callable[[], Awaitable[object]] | None) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as nursery:

        async def wait_then_stop(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            if wait is not None:
                nursery.start_soon(wait_then_stop, wait)


async def _serve_connection(
    server: ConnectionServer, write_timeout: float, tls: ssl.SSLContext | None,
    stream: trio.SocketStream,
) -> None:
    timed = WriteDeadlineStream(stream, write_timeout)
    if stream.socket.family == socket.AF_UNIX:
        # hypercorn's tasks for this connection inherit this context: requests see the peer.
        PEER_UID.set(_peer_uid(stream.socket))
    if tls is None:
        await server.serve(timed)
    else:
        # hypercorn does the handshake (with its timeout) and reads .transport_stream.socket.
        await server.serve(trio.SSLStream(timed, tls, server_side=True))


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The uid of the process that connected to the unix socket; None where this platform's
    way is not known here (FreeBSD's LOCAL_PEERCRED is not read: such requests are refused
    what needs root, and the CLI does that work itself)."""
    peercred = getattr(socket, "SO_PEERCRED", None)  # Linux
    if peercred is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])  # struct ucred: pid, uid, gid


class WriteDeadlineStream(trio.abc.HalfCloseableStream):
    """A socket stream whose every write must finish within ``timeout`` seconds.

    hypercorn shields its writes from cancellation; a deadline set inside the shield still
    fires. On expiry the connection is closed, so the peer sees it dropped and the protocol
    sees ``BrokenResourceError``.
    """

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        self._stream = stream
        self.timeout = timeout

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.timeout):
            await self._stream.send_all(data)
            return
        await trio.aclose_forcefully(self._stream)
        raise trio.BrokenResourceError(f"peer read nothing for {self.timeout:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


# --------------------------------------------------------------------------- sockets


def _bind_unix(path: Path, group: str) -> tuple[socket.socket, Path]:
    """A listening unix socket with its final mode, bound under a temporary name next to
    ``path`` (renamed into place by ``_publish_socket`` once it serves)."""
    gid = None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"supervisor.group: no group named {group!r}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise SupervisorError(f"cannot create {path.parent}: {exc.strerror}") from None
    _refuse_if_served(path)
    # Unique per server, not per process: a server torn down while the next one binds (in
    # the same process) must never remove the newcomer's socket.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    for stale in path.parent.glob(f".{path.name}.*.*"):  # left by servers that were killed
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        # Not listening yet, so nobody can connect before the mode is right.
        if gid is not None:
            os.chown(temporary, -1, gid)
        os.chmod(temporary, 0o660 if gid is not None else 0o600)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise SupervisorError(
            f"cannot create control socket {path}: {exc.strerror or exc}",
            hint="a unix socket path has at most 107 bytes" if len(str(temporary)) > 100
            else None,
        ) from None
    return sock, temporary


def _refuse_if_served(path: Path) -> None:
    """A live supervisor's socket is never taken over; a stale one is replaced."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SupervisorError(f"cannot inspect {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise SupervisorError(f"{path} exists and is not a socket",
                              hint="remove it, or point supervisor.socket elsewhere")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise SupervisorError(f"cannot probe {path}: {exc.strerror}") from None
        return  # stale: its server is gone
    finally:
        probe.close()
    raise SupervisorError(f"a supervisor is already serving on {path}",
                          hint="stop it first ('jetpack daemon-stop'), or set supervisor.socket")


def _publish_socket(temporary: Path, path: Path) -> int:
    try:
        os.rename(temporary, path)
        return path.stat().st_ino
    except OSError as exc:
        raise SupervisorError(f"cannot create control socket {path}: {exc.strerror}") from None


def _remove_socket(path: Path, inode: int) -> None:
    """Unlink ``path`` if it is still our socket (a newer supervisor may own it by now)."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == inode:
            path.unlink()


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise SupervisorError(f"http.listen {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
