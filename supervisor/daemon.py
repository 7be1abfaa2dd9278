"""``jetpack daemon``: the one trio loop that runs the event hub, the pod manager, the control
server and the metadata service, and owns the shutdown path.

SIGTERM/SIGINT: stop every pod gracefully, then exit 0. SIGHUP: reload the configuration.
SIGUSR2 (or ``daemon-stop --keep-pods``): exit leaving pods running for the next supervisor.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import trio

from jetpack.config import Config, load_config
from jetpack.errors import JetpackError, StateError, SupervisorError
from jetpack.keys import load_key
from jetpack.log import get_logger
from jetpack.mds.service import MetadataService
from jetpack.mds.service import serve as serve_metadata
from jetpack.state import StateDB
from jetpack.supervisor.api import core_router
from jetpack.supervisor.control import add_pod_routes
from jetpack.supervisor.dashboard import add_dashboard_routes
from jetpack.supervisor.events import EventHub
from jetpack.supervisor.listener import ListenerSettings
from jetpack.supervisor.metadata import ManagerDirectory
from jetpack.supervisor.metrics import SupervisorMetrics, add_metrics_route
from jetpack.supervisor.openapi import add_openapi_route
from jetpack.supervisor.pods import PodManager
from jetpack.supervisor.runtime import PodRuntime
from jetpack.supervisor.server import ServerHandle, serve

log = get_logger(component="daemon")
LOCK_NAME = "supervisor.lock"


class SupervisorLock:
    """An exclusive flock on ``<root>/supervisor.lock`` holding the supervisor's pid."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            handle = self.path.open("a+")
        except OSError as exc:
            raise StateError(f"cannot open {self.path}: {exc.strerror}",
                             hint="run 'jetpack init' first") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SupervisorError(
                    f"another supervisor is running on {self.path.parent} (pid {holder})",
                    hint="stop it first ('jetpack daemon-stop'), or use another root.path",
                ) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Daemon:
    """The running supervisor (handles for tests and for the shutdown path)."""

    config: Config
    runtime: PodRuntime
    config_path: str | None = None
    overrides: list[str] = field(default_factory=list)
    mds_bind: list[str] | None = None  # None: the host's pod-network address, mds.port
    manager: PodManager | None = None
    server: ServerHandle | None = None
    metrics: SupervisorMetrics | None = None
    mds_addresses: list[str] = field(default_factory=list)
    keep_pods: bool = False
    _stop: trio.Event = field(default_factory=trio.Event)

    def request_stop(self, keep_pods: bool = False) -> None:
        self.keep_pods = self.keep_pods or keep_pods
        self._stop.set()

    async def reload(self) -> None:
        try:
            fresh = await trio.to_thread.run_sync(load_config, self.config_path, self.overrides)
        except JetpackError as exc:
            log.error("configuration reload failed; keeping the old one", error=str(exc))
            return
        for key in ("root.path", "supervisor.socket", "storage.driver", "isolation.driver",
                    "http.listen", "http.token", "http.tls-cert", "http.tls-key"):
            if fresh[key] != self.config[key]:
                log.warning("changing this key needs a supervisor restart", key=key)
                fresh.values[key] = self.config[key]
        self.config.values.update(fresh.values)
        log.info("configuration reloaded", source=str(fresh.source))

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # A listener that would be refused is refused before anything starts (no socket, no
        # pod, no event): the same check serve() makes when it binds.
        await trio.to_thread.run_sync(ListenerSettings.from_config, self.config)
        root = self.config.root
        lock = SupervisorLock(root)
        lock.acquire()
        try:
            await self._serve(task_status)
        finally:
            lock.release()

    async def _serve(self, task_status: trio.TaskStatus[Daemon]) -> None:
        # One connection, one thread at a time: the pod manager, the control API and the
        # metadata service all reach ``db`` through this limiter (the hub has its own).
        db_limiter = trio.CapacityLimiter(1)
        # Its writers call hub.notify() after each commit: no wake-up datagram to ourselves.
        db = await trio.to_thread.run_sync(partial(StateDB.for_root, self.config.root,
                                                   wake_hub=False), limiter=db_limiter)
        reader: StateDB | None = None
        await trio.to_thread.run_sync(self._clean_leftovers)
        try:
            # The pod commands' lookups: a read-only connection of their own, so that a
            # command never waits for a pod's write transaction (WAL) nor for its thread.
            reader = await trio.to_thread.run_sync(db.open_reader)
            await _record(db, db_limiter, "supervisor.started", pid=os.getpid())
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                           signal.SIGUSR2) as signals:
                async with trio.open_nursery() as nursery:
                    hub = await nursery.start(EventHub(db.path).run)
                    manager = PodManager(self.config, db, self.runtime, notify=hub.notify,
                                         db_limiter=db_limiter, reader=reader)
                    self.manager = await nursery.start(manager.run)
                    router = core_router(hub)
                    add_pod_routes(router, manager, self.request_stop)
                    self.metrics = SupervisorMetrics(manager, hub)
                    add_metrics_route(router, self.metrics)
                    add_openapi_route(router)
                    add_dashboard_routes(router, manager, lambda: self.server)
                    self.mds_addresses = await nursery.start(
                        self._serve_metadata, manager)
                    nursery.start_soon(self._watch_signals, signals)
                    nursery.start_soon(manager.start_boot_pods)
                    async with trio.open_nursery() as serving:
                        self.server = await serving.start(partial(serve, self.config, hub,
                                                                  router))
                        log.info("supervisor ready", pid=os.getpid(),
                                 root=str(self.config.root))
                        await _sd_notify("READY=1", f"MAINPID={os.getpid()}")
                        task_status.started(self)
                        await self._stop.wait()
                        # Trigger: no new clients; then pods stop (or are left); the server
                        # returns once open requests are answered (its graceful deadline).
                        self.server.shutdown()
                        await _sd_notify("STOPPING=1")
                        await self._stop_pods(manager)
                        serving.cancel_scope.deadline = trio.current_time() + 10
                    nursery.cancel_scope.cancel()
            await _record(db, db_limiter, "supervisor.stopped", keep_pods=self.keep_pods)
        finally:
            with trio.CancelScope(shield=True):
                if reader is not None:
                    await trio.to_thread.run_sync(reader.close)
                await trio.to_thread.run_sync(db.close, limiter=db_limiter)

    def metadata_bind(self) -> list[str]:
        if self.mds_bind is not None:
            return self.mds_bind
        host = ipaddress.IPv4Interface(self.config["jail.network"]).ip
        return [f"{host}:{self.config['mds.port']}"]

    async def _serve_metadata(
        self, manager: PodManager,
        *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The metadata service in this loop, on the pod network's host address."""
        token_key = await trio.to_thread.run_sync(load_key, self.config, "mds.token-key")
        signing_key = await trio.to_thread.run_sync(load_key, self.config, "mds.signing-key")
        service = MetadataService(ManagerDirectory(manager, token_key), signing_key)
        if self.metrics is not None:
            service.on_response = self.metrics.count_mds
        await serve_metadata(service, self.metadata_bind(), task_status=task_status)

    def _clean_leftovers(self) -> None:
        """What interrupted imports left behind (their importers are gone)."""
        from jetpack.storage import open_storage

        try:
            removed = open_storage(self.config).cleanup_leftovers()
        except JetpackError as exc:
            log.warning("cleaning import leftovers failed", error=str(exc))
            return
        for item in removed:
            log.info("removed an interrupted import's leftovers", path=item)

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await _sd_notify("RELOADING=1")
                await self.reload()
                await _sd_notify("READY=1")
            else:
                log.info("signal received", signal=signal.Signals(signum).name)
                self.request_stop(keep_pods=signum == signal.SIGUSR2)

    async def _stop_pods(self, manager: PodManager) -> None:
        with trio.CancelScope(shield=True):
            if self.keep_pods:
                log.info("leaving pods running for the next supervisor",
                         pods=len(manager.tasks))
                manager.detach()
            else:
                grace = self.config.duration("pod.stop-timeout")
                with trio.move_on_after(grace + 30):
                    await manager.stop_all()

async def _record(db: StateDB, limiter: trio.CapacityLimiter, type_: str, **payload: Any
                  ) -> None:
    def write() -> None:
        with db.transaction() as tx:
            tx.event(type_, **payload)

    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(write, limiter=limiter)


async def _sd_notify(*lines: str) -> None:
    """Tell systemd (Type=notify units) when we serve, reload and stop; no-op elsewhere."""
    from jetpack.sdnotify import notify

    try:
        await trio.to_thread.run_sync(notify, "\n".join(lines))
    except JetpackError as exc:
        log.warning("sd_notify failed", error=str(exc))


def write_pidfile(path: Path) -> Callable[[], None]:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(path)
    except OSError as exc:
        raise StateError(f"cannot write pidfile {path}: {exc.strerror}") from None

    def remove() -> None:
        with suppress(FileNotFoundError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()

    return remove
