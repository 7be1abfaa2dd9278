"""The live event hub: new rows of the event log fanned out to websocket subscribers.

Writers are this process (the supervisor calls ``notify()`` after its transaction commits) and
other processes (``jetpack import`` appends to the database without a supervisor): after their
commit they send a datagram to the hub's wake socket in the state root (``StateDB``), and the
hub still polls ``MAX(seq)`` slowly in case one was lost; either way it reads the new rows and
offers them to every subscriber.

Slow-consumer policy (also in docs/events.md): the log, not the queue, is the source of truth.
Each subscriber has a queue of at most ``queue_size`` events. A live subscriber whose queue is
full is ended with ``SlowConsumer`` (websocket close 4408); it reconnects with ``since`` set to
the last seq it received and replays the rest from the database, so nothing is lost and nothing
is delivered twice. A full queue during replay only makes that subscriber read the log again
from where it is, since replay already comes from the database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple, TypeVar

import trio

from jetpack.events import (
    PAGE_SIZE,
    EventFilter,
    Heartbeat,
    Retention,
    check_since,
    read_page,
    resolve_since,
    trim_events,
)
from jetpack.log import get_logger
from jetpack.state.db import Event, StateDB, wake_socket_path

POLL_INTERVAL = 2.0
"""Seconds between looks at ``MAX(seq)`` for rows other processes appended without waking
the hub (a writer of an older jetpack; a datagram lost)."""

UNWOKEN_POLL_INTERVAL = 0.15
"""The poll interval at most, when the wake socket could not be bound (a path too long)."""

QUEUE_SIZE = 1024
"""Live events a subscriber may have waiting before it counts as too slow."""

HEARTBEAT_INTERVAL = 15.0
"""Seconds between heartbeats on a subscription."""

RETENTION_INTERVAL = 60.0
"""Seconds between retention trims."""

log = get_logger(component="events")
T = TypeVar("T")


class Entry(NamedTuple):
    """An event with its wire form, serialized once for every subscriber."""

    event: Event
    text: str

    @classmethod
    def of(cls, event: Event) -> Entry:
        return cls(event, event.to_json())


class SlowConsumer(Exception):  # noqa: N818  # a condition, named as the policy calls it
    """The subscriber's queue overflowed while it was live; resume after ``position``."""

    def __init__(self, position: int, queue_size: int) -> None:
        super().__init__(
            f"subscriber too slow: {queue_size} events waiting; resume with since={position}"
        )
        self.position = position


class HubClosed(Exception):  # noqa: N818  # a condition: the hub stopped (supervisor exiting)
    """The hub stopped; resume after ``position`` from the next supervisor."""

    def __init__(self, position: int) -> None:
        super().__init__(f"supervisor shutting down; resume with since={position}")
        self.position = position


class Subscription:
    """One subscriber's cursor: replay from the database, then live events from its queue.

    ``position`` is the last seq this subscription has dealt with (sent, or skipped by the
    filter); a heartbeat never carries more than that.
    """

    def __init__(
        self, hub: EventHub, since: int | None, event_filter: EventFilter, heartbeat: float
    ) -> None:
        self._hub = hub
        self.filter = event_filter
        self.position = hub.last_published if since is None else since
        self._queue: deque[Entry] = deque()
        self._page: deque[Entry] = deque()
        # With no `since` the subscriber wants only what comes next: no replay at all.
        self._replaying = since is not None
        self._live = since is None
        self._overflowed = False
        self._closed = False
        self._wakeup = trio.Event()
        self._heartbeat = heartbeat
        # The first message is a heartbeat: the subscriber learns its position at once (with
        # no `since`, the seq it may resume after if the connection drops before any event).
        self._next_heartbeat = trio.current_time()

    # Called by the hub, synchronously, for every new event in seq order.
    def offer(self, entry: Entry) -> None:
        if self._overflowed or not self.filter.matches(entry.event):
            return
        if len(self._queue) >= self._hub.queue_size:
            # Free the memory now; the database still holds every one of these events.
            self._overflowed = True
            self._queue.clear()
        else:
            self._queue.append(entry)
        self._wakeup.set()

    def resync(self) -> None:
        """The hub missed rows (trimmed before it read them): live subscribers must resume."""
        if self._live:
            self._overflowed = True
            self._queue.clear()
            self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def bookmark(self) -> int:
        """The seq up to which everything matching was handed out."""
        if self._live and not self._queue and not self._overflowed:
            return max(self.position, self._hub.last_published)
        return self.position

    async def next(self) -> Entry | Heartbeat:
        """The next event to send, or a heartbeat when one is due."""
        while True:
            if self._closed:
                raise HubClosed(self.bookmark())
            now = trio.current_time()
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self._heartbeat
                return Heartbeat(self.bookmark())
            entry = self._take(self._page) or self._take(self._queue if self._live else None)
            if entry is not None:
                return entry
            if self._replaying:
                page = await self._hub.read_page(self.position)
                self._page.extend(page)
                self._replaying = len(page) == PAGE_SIZE
                continue
            if self._overflowed:
                if self._live:
                    raise SlowConsumer(self.position, self._hub.queue_size)
                # The queue overflowed while replaying: replay again from where we are.
                self._overflowed = False
                self._queue.clear()
                self._replaying = True
                continue
            if not self._live:
                self._live = True
                continue
            if self._queue:
                continue
            self._wakeup = trio.Event()
            with trio.move_on_at(self._next_heartbeat):
                await self._wakeup.wait()

    def _take(self, source: deque[Entry] | None) -> Entry | None:
        """Pop entries until one is new and matches; skipped ones still advance ``position``."""
        while source:
            entry = source.popleft()
            seq = entry.event.seq
            if seq <= self.position:
                continue  # replay and live overlap: already handled
            self.position = seq
            if self.filter.matches(entry.event):
                return entry
        return None


class EventHub:
    """Fans new events out to subscriptions. Start with ``await nursery.start(hub.run)``."""

    def __init__(
        self,
        db_path: Path,
        *,
        poll_interval: float = POLL_INTERVAL,
        queue_size: int = QUEUE_SIZE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.db_path = db_path
        self.poll_interval = poll_interval
        self.queue_size = queue_size
        self.heartbeat_interval = heartbeat_interval
        self.last_published = 0
        self._subscriptions: set[Subscription] = set()
        self._nudge = trio.Event()
        self._running = False
        # One connection and one thread at a time for polling, another for replays, so that a
        # long replay never delays live delivery.
        self._poll_db: StateDB | None = None
        self._replay_db: StateDB | None = None
        self._poll_limiter = trio.CapacityLimiter(1)
        self._replay_limiter = trio.CapacityLimiter(1)
        self.observers: list[Callable[[Entry], None]] = []
        """Called (in the trio thread, synchronously: keep them cheap) with every event as it
        is published, in order, after the subscriptions got it: the metrics count from here."""

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def notify(self) -> None:
        """New rows were committed (by this process): look now instead of at the next poll.

        Call from the trio thread after the transaction committed.
        """
        self._nudge.set()

    async def run(
        self, *, task_status: trio.TaskStatus[EventHub] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._poll_db = await trio.to_thread.run_sync(StateDB, self.db_path)
        self._replay_db = await trio.to_thread.run_sync(StateDB, self.db_path)
        wake = WakeSocket(wake_socket_path(self.db_path))
        try:
            woken = await wake.bind()
            poll_interval = self.poll_interval if woken else min(self.poll_interval,
                                                                 UNWOKEN_POLL_INTERVAL)
            self.last_published = await self._in_poll_thread(self._poll_db.last_seq)
            self._running = True
            task_status.started(self)
            log.info("event hub ready", last_seq=self.last_published)
            async with trio.open_nursery() as nursery:
                if woken:
                    nursery.start_soon(self._receive_wakes, wake)
                while True:
                    with trio.move_on_after(poll_interval):
                        await self._nudge.wait()
                    self._nudge = trio.Event()
                    await self._publish_new()
        finally:
            self._running = False
            wake.close()
            for subscription in list(self._subscriptions):
                subscription.close()
            with trio.CancelScope(shield=True):
                await self._in_poll_thread(self._poll_db.close)
                await trio.to_thread.run_sync(
                    self._replay_db.close, limiter=self._replay_limiter
                )

    async def _receive_wakes(self, wake: WakeSocket) -> None:
        """Each datagram (one per commit that appended events) is a nudge; a burst of them
        makes one read of the log, since the nudge is an event, not a count."""
        while True:
            await wake.receive()
            self._nudge.set()

    @asynccontextmanager
    async def subscribe(
        self,
        since: int | None,
        event_filter: EventFilter = EventFilter(),  # noqa: B008  # frozen, immutable default
        *,
        heartbeat_interval: float | None = None,
    ) -> AsyncIterator[Subscription]:
        """A subscription replaying after ``since`` (exclusive; ``None``: only new events).

        Raises ``SinceExpired`` when events after ``since`` are no longer retained.
        """
        if not self._running:
            raise HubClosed(since or 0)
        if since is not None:
            await self._in_replay_thread(check_since, self._db(self._replay_db), since)
        subscription = Subscription(
            self, since, event_filter, heartbeat_interval or self.heartbeat_interval
        )
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    async def resolve_since(self, since: int | str) -> int:
        """A ``since`` given as a seq or an RFC 3339 time, as the seq to replay after."""
        return await self._in_replay_thread(resolve_since, self._db(self._replay_db), since)

    async def read_page(self, after: int) -> list[Entry]:
        db = self._db(self._replay_db)
        return await self._in_replay_thread(
            lambda: [Entry.of(e) for e in read_page(db, after)]
        )

    async def _publish_new(self) -> None:
        db = self._db(self._poll_db)
        while True:
            after = self.last_published
            entries = await self._in_poll_thread(_new_entries, db, after)
            if not entries:
                return
            if entries[0].event.seq != after + 1:
                log.warning("event rows trimmed before publication", after=after,
                            first=entries[0].event.seq)
                for subscription in self._subscriptions:
                    subscription.resync()
            for entry in entries:
                for subscription in list(self._subscriptions):
                    subscription.offer(entry)
                for observe in self.observers:
                    observe(entry)
            self.last_published = entries[-1].event.seq
            if len(entries) < PAGE_SIZE:
                return

    def _db(self, db: StateDB | None) -> StateDB:
        if db is None:
            raise HubClosed(0)
        return db

    async def _in_poll_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._poll_limiter)

    async def _in_replay_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._replay_limiter)


class WakeSocket:
    """The hub's end of the wake socket: bound afresh (only the supervisor holding the state
    root's lock runs a hub, so a socket left there is stale), mode 0600, removed on close
    unless another hub has since replaced it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inode: tuple[int, int] | None = None

    async def bind(self) -> bool:
        """Bind; ``False`` (logged) when it cannot be bound, so that the hub polls instead."""
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
            # Nudges coalesce: a small buffer bounds the memory a burst of writers can use.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await self.socket.bind(str(self.path))
            os.chmod(self.path, 0o600)
            bound = self.path.lstat()
        except OSError as exc:
            log.warning("cannot bind the event wake socket; polling instead",
                        path=str(self.path), error=str(exc))
            self.socket.close()
            return False
        self._inode = (bound.st_dev, bound.st_ino)
        return True

    async def receive(self) -> None:
        await self.socket.recv(64)

    def close(self) -> None:
        self.socket.close()
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            now = self.path.lstat()
            if (now.st_dev, now.st_ino) == self._inode:
                self.path.unlink()


def _new_entries(db: StateDB, after: int) -> list[Entry]:
    """Rows after ``after``, checking the cheap ``MAX(seq)`` first (the common answer: none)."""
    if db.last_seq() <= after:
        return []
    return [Entry.of(event) for event in db.events_since(after, limit=PAGE_SIZE)]


async def run_retention(
    db_path: Path,
    retention: Retention,
    *,
    interval: float = RETENTION_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Trim the log to ``retention`` now and every ``interval`` seconds, in a thread of its
    own (a trim waits for the write lock like any writer)."""
    limiter = trio.CapacityLimiter(1)
    db = await trio.to_thread.run_sync(StateDB, db_path, limiter=limiter)
    try:
        task_status.started()
        while True:
            removed = await trio.to_thread.run_sync(trim_events, db, retention, limiter=limiter)
            if removed:
                log.info("event log trimmed", removed=removed)
            await trio.sleep(interval)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.close, limiter=limiter)
