"""The state database: migrations, WAL, one transaction per change + event, concurrent writers."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jetpack.errors import StateError
from jetpack.state import SCHEMA_VERSION, StateDB
from jetpack.state.db import wake_socket_path

from conftest import REPO


def test_create_migrate_and_wal(tmp_path: Path) -> None:
    with StateDB.for_root(tmp_path, create=True) as db:
        assert db.version == SCHEMA_VERSION
        mode = db.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"images", "pods", "apps", "tags", "events"} <= tables
    # reopening migrates nothing and keeps the version
    with StateDB.for_root(tmp_path) as db:
        assert db.version == SCHEMA_VERSION


def test_missing_database_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(StateError) as info:
        StateDB.for_root(tmp_path)
    assert info.value.hint is not None
    assert "jetpack init" in info.value.hint


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    StateDB.for_root(tmp_path, create=True).close()
    conn = sqlite3.connect(tmp_path / "jetpack.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="newer"):
        StateDB.for_root(tmp_path)


def test_change_and_event_commit_together(tmp_path: Path) -> None:
    with StateDB.for_root(tmp_path, create=True) as db:
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO images (id, name, labels, manifest, size, created, storage)"
                " VALUES ('sha512-aa', 'example.com/a', '{}', '{}', 1, 0, 'x')"
            )
            event = tx.event("image.imported", image="sha512-aa", name="example.com/a")
        assert event.seq == 1
        assert db.events_since(0)[0].to_json_obj() == {
            "seq": 1, "time": event.time, "type": "image.imported", "image": "sha512-aa",
            "name": "example.com/a",
        }
        assert event.time.endswith("Z")
        assert "." in event.time  # sub-second


def test_rolled_back_change_leaves_no_event_and_no_gap(tmp_path: Path) -> None:
    with StateDB.for_root(tmp_path, create=True) as db:
        with db.transaction() as tx:
            tx.event("supervisor.started")
        def fail_half_way() -> None:
            with db.transaction() as tx:
                tx.event("pod.prepared", pod="p")
                raise RuntimeError("change failed half-way")

        with pytest.raises(RuntimeError):
            fail_half_way()
        with db.transaction() as tx:
            tx.event("supervisor.stopped")
        assert [(e.seq, e.type) for e in db.events_since(0)] == [
            (1, "supervisor.started"), (2, "supervisor.stopped")
        ]


WRITER = """
import sys
from pathlib import Path
from jetpack.state import StateDB
db = StateDB.for_root(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    with db.transaction() as tx:
        tx.event("test.write", writer=sys.argv[2], i=i)
"""


def test_concurrent_writer_processes_give_gap_free_sequence(tmp_path: Path) -> None:
    StateDB.for_root(tmp_path, create=True).close()
    writers, count = 4, 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(w), str(count)],
            env={"PYTHONPATH": str(REPO)},
        )
        for w in range(writers)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    with StateDB.for_root(tmp_path) as db:
        events = db.events_since(0)
        assert [e.seq for e in events] == list(range(1, writers * count + 1))
        for w in range(writers):
            mine = [e.payload["i"] for e in events if e.payload and e.payload["writer"] == str(w)]
            assert mine == list(range(count))  # each writer's events in its own order
        assert db.last_seq() == writers * count
        assert [e.seq for e in db.events_since(10, limit=3)] == [11, 12, 13]


def test_commit_with_events_wakes_the_event_hub(tmp_path: Path) -> None:
    with StateDB.for_root(tmp_path, create=True) as db:
        hub = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        hub.bind(str(wake_socket_path(db.path)))
        hub.settimeout(5)
        try:
            with db.transaction() as tx:
                tx.event("image.imported", n=1)
            assert hub.recv(64)
            # A change without an event wakes nobody.
            with db.transaction() as tx:
                tx.execute("PRAGMA user_version")
            hub.settimeout(0.2)
            with pytest.raises(TimeoutError):
                hub.recv(64)
        finally:
            hub.close()


def test_writer_never_blocks_or_fails_on_the_wake_socket(tmp_path: Path) -> None:
    with StateDB.for_root(tmp_path, create=True) as db:
        path = wake_socket_path(db.path)
        # No supervisor ever ran: no socket.
        with db.transaction() as tx:
            tx.event("image.imported", n=0)
        # A supervisor that never reads: its buffer fills, the writer goes on.
        hub = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        hub.bind(str(path))
        try:
            for i in range(3000):
                with db.transaction() as tx:
                    tx.event("image.imported", n=i)
        finally:
            hub.close()
        # A supervisor killed: its socket is stale (connection refused).
        assert path.exists()
        with db.transaction() as tx:
            tx.event("image.imported", n=-1)
        assert db.last_seq() == 3002


def test_reader_reads_past_an_open_write_and_refuses_to_write(tmp_path: Path) -> None:
    """``open_reader``: a second connection whose snapshot sees every commit made before it
    began, nothing uncommitted and nothing committed after; it neither waits for the writer's
    open transaction nor writes."""
    db = StateDB.for_root(tmp_path, create=True)
    reader = db.open_reader()
    try:
        with db.transaction() as tx:
            tx.event("first")
        with db.transaction() as tx:
            tx.event("second")  # open while the reader reads
            with reader.snapshot():
                assert [e.type for e in reader.events_since(0)] == ["first"]
        with reader.snapshot():
            seen = [e.type for e in reader.events_since(0)]
            with db.transaction() as tx:
                tx.event("third")
            assert [e.type for e in reader.events_since(0)] == seen == ["first", "second"]
        assert [e.type for e in reader.events_since(0)] == ["first", "second", "third"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("DELETE FROM events")
    finally:
        reader.close()
        db.close()
