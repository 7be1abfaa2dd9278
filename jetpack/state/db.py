"""Connection handling, versioned migrations and the transaction + event append primitive.

Safe for several CLI processes and the supervisor at once: WAL journal, a busy timeout, and
short ``BEGIN IMMEDIATE`` transactions so that writers queue instead of failing mid-way.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jetpack.errors import StateError

DB_NAME = "jetpack.db"
# The database holds pods' environment variables: root only. SQLite gives its -wal and -shm
# files the database file's mode.
DB_MODE = 0o600
BUSY_TIMEOUT_MS = 30_000
WAKE_NAME = "events-wake.sock"
"""The supervisor's event hub binds this unix datagram socket in the state root (root only,
like the database); a writer that appended events sends it one byte after the commit, so the
hub reads them at once instead of at its next poll. Best effort: no supervisor, nothing sent."""

# Each entry migrates from version (index) to version (index + 1). Never edit a shipped entry:
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE images (
        id          TEXT PRIMARY KEY,          -- sha512-<128 hex>
        name        TEXT NOT NULL,
        labels      TEXT NOT NULL,             -- JSON object
        manifest    TEXT NOT NULL,             -- the manifest as imported (JSON text)
        size        INTEGER NOT NULL,          -- bytes of the uncompressed tar
        created     REAL NOT NULL,             -- unix time of import
        storage     TEXT NOT NULL,             -- driver-specific location (dataset or path)
        source      TEXT NOT NULL DEFAULT ''   -- where it came from (file, URL, build)
    );
    CREATE INDEX images_name ON images(name);
    CREATE TABLE tags (
        name        TEXT NOT NULL,
        tag         TEXT NOT NULL,
        image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        PRIMARY KEY (name, tag)
    );
    CREATE TABLE pods (
        uuid        TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        state       TEXT NOT NULL,
        manifest    TEXT NOT NULL,             -- reified pod manifest (JSON text)
        options     TEXT NOT NULL DEFAULT '{}',-- restart policy, ports, flags (JSON)
        ip          TEXT UNIQUE,               -- IPv4 address without prefix, NULL until given
        created     REAL NOT NULL,
        started     REAL,
        exited      REAL,
        boot        INTEGER NOT NULL DEFAULT 0,-- start at supervisor start
        priority    INTEGER NOT NULL DEFAULT 99,
        runtime     TEXT NOT NULL DEFAULT '{}' -- stage1 handles (pids + start times, netns)
    );
    CREATE TABLE apps (
        pod_uuid    TEXT NOT NULL REFERENCES pods(uuid) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        image_id    TEXT NOT NULL REFERENCES images(id),
        state       TEXT NOT NULL,
        exit_status INTEGER,
        signal      INTEGER,
        pid         INTEGER,
        pid_start   TEXT,                      -- start time of pid, so a recycled pid is not ours
        restarts    INTEGER NOT NULL DEFAULT 0,
        rootfs      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (pod_uuid, name)
    );
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        time        TEXT NOT NULL,             -- RFC 3339 UTC with microseconds
        type        TEXT NOT NULL,
        pod         TEXT,
        pod_name    TEXT,
        app         TEXT,
        image       TEXT,
        payload     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_pod ON events(pod);
    CREATE INDEX events_type ON events(type);
    """,
    """
    ALTER TABLE apps ADD COLUMN spec TEXT NOT NULL DEFAULT '';      -- stage1 AppSpec (JSON)
    ALTER TABLE apps ADD COLUMN process TEXT NOT NULL DEFAULT '{}'; -- stage1 process record
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def rfc3339_now() -> str:
    """The current UTC time as RFC 3339 with microseconds (``2026-11-28T21:00:00.123456Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Event:
    """One row of the event log."""

    seq: int
    time: str
    type: str
    pod: str | None = None
    pod_name: str | None = None
    app: str | None = None
    image: str | None = None
    payload: Mapping[str, Any] | None = None

    def to_json_obj(self) -> dict[str, Any]:
        """The wire form: fixed keys first, then the payload; absent subjects are left out."""
        obj: dict[str, Any] = {"seq": self.seq, "time": self.time, "type": self.type}
        for key in ("pod", "pod_name", "app", "image"):
            value = getattr(self, key)
            if value is not None:
                obj[key] = value
        for key, value in sorted((self.payload or {}).items()):
            obj.setdefault(key, value)
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Event:
        return cls(
            seq=row["seq"],
            time=row["time"],
            type=row["type"],
            pod=row["pod"],
            pod_name=row["pod_name"],
            app=row["app"],
            image=row["image"],
            payload=json.loads(row["payload"]),
        )


class Transaction:
    """An open write transaction; ``event`` appends to the log inside it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.events: list[Event] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def event(
        self,
        type_: str,
        *,
        pod: str | None = None,
        pod_name: str | None = None,
        app: str | None = None,
        image: str | None = None,
        **payload: Any,
    ) -> Event:
        now = rfc3339_now()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        cur = self.conn.execute(
            "INSERT INTO events (time, type, pod, pod_name, app, image, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, type_, pod, pod_name, app, image, body),
        )
        seq = cur.lastrowid
        assert seq is not None  # an INSERT into a rowid table always sets it
        event = Event(seq, now, type_, pod, pod_name, app, image, payload)
        self.events.append(event)
        return event


def restrict_database(path: Path) -> None:
    """Create the database file (and fix an existing one, its -wal and -shm) mode 0600, so
    that SQLite never makes a world-readable file of it."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DB_MODE))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            os.chmod(name, DB_MODE)
        except FileNotFoundError:
            pass


class StateDB:
    """The state database of one state root. Open one per process (or per thread)."""

    def __init__(self, path: Path, *, create: bool = False, wake_hub: bool = True,
                 reader: bool = False) -> None:
        """``wake_hub=False``: commits send no wake-up (the supervisor's own connection, whose
        writers tell the hub in-process). ``reader``: a connection that only reads (SQLite
        refuses its writes), opened on a database another connection has created and
        migrated; in WAL mode its reads never wait for a writer's transaction."""
        self.path = path
        self.wake_hub = wake_hub
        self.reader = reader
        self._unlogged_failures: dict[str, Any] = {}  # writes a full disk refused, not yet logged
        if not create and not path.exists():
            raise StateError(
                f"no state database at {path}", hint="run 'jetpack init' to create the state root"
            )
        if create:
            try:
                restrict_database(path)
            except OSError as exc:
                raise StateError(f"cannot create state database {path}: {exc.strerror}"
                                 ) from None
        try:
            self.conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if reader:
                self.conn.execute("PRAGMA query_only = ON")
            else:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA foreign_keys = ON")
                self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from None
        if not reader:
            self.migrate()

    @classmethod
    def for_root(cls, root: Path, *, create: bool = False, wake_hub: bool = True) -> StateDB:
        return cls(root / DB_NAME, create=create, wake_hub=wake_hub)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Bring the schema up to ``SCHEMA_VERSION``; refuse a database from a newer jetpack."""
        with self.transaction() as tx:
            current = int(tx.execute("PRAGMA user_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: schema version {current} is newer than this jetpack's "
                    f"({SCHEMA_VERSION})",
                    hint="upgrade jetpack",
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in _split_sql(MIGRATIONS[version]):
                    tx.execute(statement)
            if current != SCHEMA_VERSION:
                tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def open_reader(self) -> StateDB:
        """A second connection to this database that only reads (``reader``)."""
        return StateDB(self.path, reader=True)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: the queries inside see one state, every commit made before
        its first query and none after (WAL: it takes no lock a writer waits for)."""
        try:
            self.conn.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot begin read: {exc}") from None
        try:
            yield
        finally:
            self._rollback()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        A write the disk has no room for (SQLITE_FULL) is rolled back whole and raised as a
        StateError; what it would have logged is remembered, and the next transaction that
        commits on this connection records it as a ``state.write-failed`` event."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot begin transaction: {exc}") from None
        tx = Transaction(self.conn)
        try:
            yield tx
            if self._unlogged_failures:
                tx.event("state.write-failed", **self._unlogged_failures)
        except sqlite3.Error as exc:
            self._rollback()
            if not _disk_full(exc):
                raise
            self._remember_failure(tx, exc)
            raise StateError(f"{self.path}: write failed: {exc}",
                             hint="free space on the state root's filesystem") from None
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if _disk_full(exc):
                self._remember_failure(tx, exc)
            raise StateError(f"{self.path}: commit failed: {exc}",
                             hint="free space on the state root's filesystem"
                             if _disk_full(exc) else None) from None
        self._unlogged_failures = {}
        if tx.events and self.wake_hub:
            self._wake_event_hub()

    def _rollback(self) -> None:
        """Roll back what is still open (SQLite may have rolled back already: a full disk)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _remember_failure(self, tx: Transaction, exc: sqlite3.Error) -> None:
        """Count a write the disk refused, with the events it lost (bounded: the first 100)."""
        failed = self._unlogged_failures
        lost = [e.type if e.pod is None else f"{e.type} {e.pod}" for e in tx.events
                if e.type != "state.write-failed"]
        failed["failures"] = int(failed.get("failures", 0)) + 1
        failed.setdefault("first", rfc3339_now())
        failed["error"] = str(exc)
        failed["lost_events"] = (list(failed.get("lost_events", [])) + lost)[:100]
        failed["lost_event_count"] = int(failed.get("lost_event_count", 0)) + len(lost)

    def _wake_event_hub(self) -> None:
        """Tell a running supervisor that new events are committed; never blocks, never
        fails: with no supervisor (no socket, or a stale one) or a full socket buffer (the hub
        is already due to look) the datagram is dropped and the hub's poll finds the rows."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
                waker.setblocking(False)
                waker.sendto(b"!", str(wake_socket_path(self.path)))
        except OSError:
            pass

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (autocommit; sees the latest committed state)."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: query failed: {exc}") from None

    def events_since(
        self, since: int = 0, *, limit: int | None = None
    ) -> list[Event]:
        """Events with ``seq > since`` in order (at most ``limit``)."""
        sql = "SELECT * FROM events WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (since,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (since, limit)
        return [Event.from_row(row) for row in self.query(sql, params)]

    def last_seq(self) -> int:
        row = self.query("SELECT MAX(seq) FROM events")[0]
        return int(row[0] or 0)


def _disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def wake_socket_path(db_path: Path) -> Path:
    """Where the event hub of the supervisor using ``db_path`` listens for wake-ups."""
    return db_path.with_name(WAKE_NAME)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (``;``-terminated; no ``;`` inside literals)."""
    statements = []
    for chunk in script.split(";"):
        lines = [line.split("--", 1)[0] for line in chunk.splitlines()]
        statement = "\n".join(lines).strip()
        if statement:
            statements.append(statement)
    return statements


def now() -> float:
    """Wall-clock time for ``created``/``started`` columns."""
    return time.time()
