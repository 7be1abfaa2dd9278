"""The event log as readers see it: filters, ``since`` positions, pages, retention, formatting.

Shared by ``jetpack events`` (which reads the database directly with ``--no-follow``), the
supervisor's live hub and ``jetpack gc``; the wire form of an event is always ``Event.to_json()``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jetpack.config import Config
from jetpack.errors import StateError, UsageError
from jetpack.state.db import Event, StateDB

PAGE_SIZE = 500
"""Rows per read when replaying the log: bounded memory whatever the backlog."""

TRIM_CHUNK = 5000
"""Rows deleted per retention transaction, so that writers never wait long for the lock."""

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the events.time column's format (fixed width)
_UUID_PREFIX = re.compile(r"^[0-9a-f]{8}[0-9a-f-]*$")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Heartbeat:
    """A bookmark: every event matching the subscriber's filters up to ``last_seq`` was sent."""

    last_seq: int

    def to_json(self) -> str:
        return json.dumps({"type": "heartbeat", "last_seq": self.last_seq}, separators=(",", ":"))


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants: values of one key are OR-ed, different keys AND-ed.

    ``pods`` match a pod UUID, a pod name, or a UUID prefix of at least 8 characters; ``types``
    match exactly or as a dotted prefix (``pod`` and ``pod.`` both match ``pod.started``);
    ``apps`` match an app name exactly. An empty tuple does not filter.
    """

    pods: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> EventFilter:
        return cls(
            pods=tuple(query.get("pod", ())),
            types=tuple(query.get("type", ())),
            apps=tuple(query.get("app", ())),
        )

    def matches(self, event: Event) -> bool:
        if self.types and not any(_type_matches(t, event.type) for t in self.types):
            return False
        if self.apps and event.app not in self.apps:
            return False
        return not self.pods or any(_pod_matches(p, event) for p in self.pods)

    def query_items(self) -> list[tuple[str, str]]:
        """The filter as URL query items (``pod=..&type=..``), in a stable order."""
        return (
            [("pod", p) for p in self.pods]
            + [("type", t) for t in self.types]
            + [("app", a) for a in self.apps]
        )


def _type_matches(wanted: str, actual: str) -> bool:
    prefix = wanted.removesuffix("*").removesuffix(".")
    return actual == wanted or actual.startswith(prefix + ".")


def _pod_matches(wanted: str, event: Event) -> bool:
    if wanted in (event.pod, event.pod_name):
        return True
    return (
        event.pod is not None
        and _UUID_PREFIX.match(wanted) is not None
        and event.pod.startswith(wanted)
    )


# --------------------------------------------------------------------------- since


def parse_time(text: str) -> str:
    """An RFC 3339 timestamp normalized to the log's own UTC format (comparable as text)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"not a sequence number or RFC 3339 time: {text!r}",
            hint="examples: --since 42, --since 2026-11-28T21:00:00Z",
        ) from None
    if moment.tzinfo is None:
        raise UsageError(
            f"time {text!r} has no UTC offset", hint="add Z or +HH:MM (RFC 3339)"
        )
    try:
        return moment.astimezone(UTC).strftime(_TIME_FORMAT)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise UsageError(f"time {text!r} is out of range") from None


def parse_since(text: str) -> int | str:
    """``--since``/``since=``: a sequence number (int) or a normalized time (str)."""
    value = text.strip()
    if value.isdigit():
        # isdigit() holds for "²" too, and int() refuses more than 4300 digits; a seq is an
        # SQLite integer (found by fuzzing: each escaped the events stream as a raw error)
        if not value.isascii() or len(value) > 18:
            raise UsageError(f"not a sequence number: {value[:40]!r}",
                             hint="a sequence number has at most 18 digits")
        return int(value)
    return parse_time(value)


def resolve_since(db: StateDB, since: int | str) -> int:
    """The exclusive starting seq: a time becomes the last event at or before it; a time
    before the retained log starts at its beginning."""
    if isinstance(since, int):
        return since
    row = db.query("SELECT MAX(seq) FROM events WHERE time <= ?", (since,))[0]
    if row[0] is not None:
        return int(row[0])
    return first_retained_seq(db) - 1


def first_retained_seq(db: StateDB) -> int:
    """The seq of the oldest retained event; on an empty log, the seq the next event gets."""
    row = db.query("SELECT MIN(seq) FROM events")[0]
    if row[0] is not None:
        return int(row[0])
    return last_assigned_seq(db) + 1


def last_assigned_seq(db: StateDB) -> int:
    """The highest seq ever given out, even if retention has since removed it."""
    rows = db.query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    return int(rows[0][0]) if rows else 0


class SinceExpired(StateError):  # noqa: N818  # a condition of the log, named as documented
    """A reader's ``since`` is not a position in this log any more (or never was).

    Either retention removed events after it, or it is ahead of every seq this log has given
    out (the state root was re-created). The reader must re-list state and follow from
    ``last_seq``.
    """

    def __init__(self, since: int, first: int, last: int) -> None:
        if since >= last + 1:
            what = f"since={since} is ahead of the log (last seq {last})"
        else:
            what = f"since={since} is older than the retained log (first seq {first})"
        super().__init__(what, hint=f"re-list state, then follow from since={last}")
        self.since = since
        self.first = first
        self.last = last

    @property
    def close_reason(self) -> str:
        """The websocket close reason (at most 123 bytes by RFC 6455)."""
        return f"{self.message}: re-list, then follow from since={self.last}"[:123]


def check_since(db: StateDB, since: int) -> None:
    """Raise ``SinceExpired`` unless every event after ``since`` is still in the log.

    ``since = 0`` always means "the whole retained log" and never expires.
    """
    if since == 0:
        return
    first = first_retained_seq(db)
    last = last_assigned_seq(db)
    if since + 1 < first or since > last:
        raise SinceExpired(since, first, last)


def read_page(db: StateDB, after: int, limit: int = PAGE_SIZE) -> list[Event]:
    """Up to ``limit`` events with ``seq > after``; ``SinceExpired`` when retention removed the
    ones right after ``after`` (the log is gap-free, so a jump means a trim)."""
    events = db.events_since(after, limit=limit)
    if after > 0 and events and events[0].seq != after + 1:
        raise SinceExpired(after, events[0].seq, last_assigned_seq(db))
    return events


def iter_events(db: StateDB, since: int, event_filter: EventFilter) -> Iterator[Event]:
    """Every retained event after ``since`` matching the filter, read in pages."""
    check_since(db, since)
    position = since
    while True:
        page = read_page(db, position)
        for event in page:
            if event_filter.matches(event):
                yield event
        if len(page) < PAGE_SIZE:
            return
        position = page[-1].seq


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Retention:
    """``events.retention.count`` and ``events.retention.age`` (seconds)."""

    count: int
    age: float

    @classmethod
    def from_config(cls, config: Config) -> Retention:
        return cls(
            count=config.int("events.retention.count"),
            age=config.duration("events.retention.age"),
        )


def trim_events(db: StateDB, retention: Retention, *, now: datetime | None = None) -> int:
    """Delete the oldest events beyond the retention limits; returns how many were removed.

    Only a prefix of the log is ever removed (every seq up to a cut-off), so the retained log
    stays gap-free even if the clock went backwards. Deletes run in chunks of ``TRIM_CHUNK``
    rows, each its own short transaction.
    """
    moment = now or datetime.now(UTC)
    cutoff_time = (moment - timedelta(seconds=retention.age)).strftime(_TIME_FORMAT)
    by_count = last_assigned_seq(db) - retention.count
    row = db.query("SELECT MAX(seq) FROM events WHERE time < ?", (cutoff_time,))[0]
    by_age = int(row[0]) if row[0] is not None else 0
    cut = max(by_count, by_age)
    removed = 0
    while True:
        with db.transaction() as tx:
            first = tx.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if first is None or first > cut:
                return removed
            upto = min(cut, int(first) + TRIM_CHUNK - 1)
            removed += tx.execute("DELETE FROM events WHERE seq <= ?", (upto,)).rowcount


# --------------------------------------------------------------------------- formatting


def format_human(obj: Mapping[str, Any]) -> str:
    """One line per event: ``seq time type pod(name) app=.. image=.. key=value...``."""
    parts = [str(obj.get("seq", "")), str(obj.get("time", "")), str(obj.get("type", ""))]
    if obj.get("pod_name") or obj.get("pod"):
        short = str(obj.get("pod") or "")[:8]
        name = obj.get("pod_name")
        parts.append(f"{name} ({short})" if name and short else str(name or short))
    for key in ("app", "image"):
        if obj.get(key):
            parts.append(f"{key}={obj[key]}")
    skip = {"seq", "time", "type", "pod", "pod_name", "app", "image"}
    parts += [f"{k}={_render(v)}" for k, v in obj.items() if k not in skip]
    return "  ".join(parts)


def _render(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return json.dumps(value, separators=(",", ":"))


def events_to_lines(events: Iterable[Event], *, as_json: bool) -> Iterator[str]:
    """What ``jetpack events`` prints for each event."""
    for event in events:
        yield event.to_json() if as_json else format_human(event.to_json_obj())
