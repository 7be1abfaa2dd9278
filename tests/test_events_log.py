"""The event log as readers see it: filters, since, pages, retention, `jetpack events
--no-follow` (no supervisor involved)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from jetpack.errors import UsageError
from jetpack.events import (
    PAGE_SIZE,
    EventFilter,
    Retention,
    SinceExpired,
    check_since,
    first_retained_seq,
    format_human,
    iter_events,
    parse_since,
    read_page,
    resolve_since,
    trim_events,
)
from jetpack.state.db import Event, StateDB

from conftest import Jetpack, write_conf

POD_A = "0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a90"
POD_B = "7d2e9c41-1111-4a53-9f3e-2f1f6d8b7a91"


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    (tmp_path / "state").mkdir()
    return StateDB(tmp_path / "state" / "jetpack.db", create=True)


def life_of_a_pod(db: StateDB) -> list[Event]:
    """A pod's whole life, one transaction per change, as the runtime writes it."""
    events = []
    steps: list[tuple[str, dict[str, object]]] = [
        ("image.imported", {"image": "sha512-" + "ab" * 64}),
        ("pod.prepared", {"pod": POD_A, "pod_name": "web"}),
        ("pod.starting", {"pod": POD_A, "pod_name": "web"}),
        ("app.started", {"pod": POD_A, "pod_name": "web", "app": "nginx"}),
        ("pod.started", {"pod": POD_A, "pod_name": "web"}),
        ("pod.prepared", {"pod": POD_B, "pod_name": "db"}),
        ("app.started", {"pod": POD_B, "pod_name": "db", "app": "postgres"}),
        ("app.exited", {"pod": POD_A, "pod_name": "web", "app": "nginx", "exit_status": 3}),
        ("pod.exited", {"pod": POD_A, "pod_name": "web"}),
        ("app.restarting", {"pod": POD_B, "pod_name": "db", "app": "postgres",
                            "attempt": 1, "delay": 0.1}),
    ]
    for type_, fields in steps:
        with db.transaction() as tx:
            events.append(tx.event(type_, **fields))  # type: ignore[arg-type]  # test data
    return events


def test_filters_or_within_a_key_and_across_keys(db: StateDB) -> None:
    life_of_a_pod(db)

    def seqs(f: EventFilter) -> list[int]:
        return [e.seq for e in iter_events(db, 0, f)]

    assert seqs(EventFilter()) == list(range(1, 11))
    assert seqs(EventFilter(pods=("web",))) == [2, 3, 4, 5, 8, 9]
    assert seqs(EventFilter(pods=(POD_B[:8],))) == [6, 7, 10]  # a UUID prefix
    assert seqs(EventFilter(pods=("web", POD_B))) == list(range(2, 11))  # OR
    assert seqs(EventFilter(types=("pod.",))) == [2, 3, 5, 6, 9]
    assert seqs(EventFilter(types=("pod",))) == [2, 3, 5, 6, 9]
    assert seqs(EventFilter(types=("app.exited", "image.imported"))) == [1, 8]
    assert seqs(EventFilter(pods=("web",), types=("app.",))) == [4, 8]  # AND
    assert seqs(EventFilter(apps=("postgres",), types=("app.started",))) == [7]
    assert seqs(EventFilter(types=("po",))) == []  # a prefix stops at a dot


def test_since_is_exclusive_and_accepts_rfc3339(db: StateDB) -> None:
    events = life_of_a_pod(db)
    assert [e.seq for e in iter_events(db, 7, EventFilter())] == [8, 9, 10]
    assert parse_since("7") == 7
    at = events[4].time  # the 5th event's own time: since is exclusive
    assert resolve_since(db, parse_since(at)) == 5
    moment = datetime.fromisoformat(at).astimezone(timezone(timedelta(hours=2)))
    assert resolve_since(db, parse_since(moment.isoformat())) == 5  # any offset
    assert resolve_since(db, parse_since("2000-01-01T00:00:00Z")) == 0
    with pytest.raises(UsageError, match="offset"):
        parse_since("2026-01-01T00:00:00")
    with pytest.raises(UsageError, match="RFC 3339"):
        parse_since("yesterday")


def test_replay_reads_in_pages_and_stays_gap_free(db: StateDB) -> None:
    with db.transaction() as tx:
        for i in range(PAGE_SIZE * 2 + 7):
            tx.event("pod.started", pod=POD_A, n=i)
    seqs = [e.seq for e in iter_events(db, 0, EventFilter())]
    assert seqs == list(range(1, PAGE_SIZE * 2 + 8))
    assert len(read_page(db, 0)) == PAGE_SIZE


def test_retention_by_count_removes_only_a_prefix(db: StateDB) -> None:
    life_of_a_pod(db)
    assert trim_events(db, Retention(count=4, age=3600)) == 6
    assert [e.seq for e in db.events_since(0)] == [7, 8, 9, 10]
    assert first_retained_seq(db) == 7
    with pytest.raises(SinceExpired, match="older than the retained log"):
        check_since(db, 5)
    check_since(db, 6)  # 7 onwards are all there
    check_since(db, 0)  # 0 is "whole retained log", never expired
    with pytest.raises(SinceExpired, match="ahead of the log"):
        check_since(db, 11)
    # seqs are never reused, even when everything is trimmed
    trim_events(db, Retention(count=1, age=0))
    assert first_retained_seq(db) == 11
    with db.transaction() as tx:
        assert tx.event("pod.destroyed", pod=POD_A).seq == 11


def test_retention_by_age(db: StateDB) -> None:
    life_of_a_pod(db)
    last = db.events_since(9)[0]
    later = datetime.fromisoformat(last.time) + timedelta(seconds=10)
    assert trim_events(db, Retention(count=1000, age=5), now=later) == 10
    assert trim_events(db, Retention(count=1000, age=5), now=later) == 0
    fresh = datetime.now(UTC)
    with db.transaction() as tx:
        tx.event("pod.prepared", pod=POD_A)
    assert trim_events(db, Retention(count=1000, age=60), now=fresh) == 0


def test_read_page_notices_a_trim_behind_the_reader(db: StateDB) -> None:
    life_of_a_pod(db)
    trim_events(db, Retention(count=3, age=3600))
    with pytest.raises(SinceExpired) as caught:
        read_page(db, 2)
    assert "re-list" in caught.value.close_reason
    assert len(caught.value.close_reason.encode()) <= 123


def test_human_format_names_the_pod_and_payload(db: StateDB) -> None:
    events = life_of_a_pod(db)
    line = format_human(events[7].to_json_obj())
    assert line.startswith(f"8  {events[7].time}  app.exited  web (0c6f1b0e)  app=nginx")
    assert line.endswith("exit_status=3")


def conf_for(tmp_path: Path, **extra: str) -> Jetpack:
    root = tmp_path / "state"
    conf = write_conf(tmp_path / "jetpack.conf", **{"root.path": str(root),
                                                    "storage.driver": "dir",
                                                    "supervisor.socket": str(tmp_path / "no.sock"),
                                                    **extra})
    return Jetpack(conf, root)


def test_cli_no_follow_json_is_exactly_the_log(tmp_path: Path, db: StateDB) -> None:
    events = life_of_a_pod(db)
    jetpack = conf_for(tmp_path)
    out = jetpack("events", "--json", "--since", "0", "--no-follow").stdout
    assert out.splitlines() == [e.to_json() for e in events]
    # serialized the same way on every call, and the same as the stored rows
    assert out == jetpack("events", "--json", "--since", "0", "--no-follow").stdout
    assert out.splitlines() == [e.to_json() for e in db.events_since(0)]
    seqs = [json.loads(line)["seq"] for line in out.splitlines()]
    assert seqs == list(range(1, 11))
    exited = json.loads(out.splitlines()[7])
    assert exited["exit_status"] == 3


def test_cli_no_follow_filters_since_and_human_lines(tmp_path: Path, db: StateDB) -> None:
    events = life_of_a_pod(db)
    jetpack = conf_for(tmp_path)
    out = jetpack("events", "--no-follow", "--pod", "web", "--type", "app.").stdout
    assert [line.split()[0] for line in out.splitlines()] == ["4", "8"]
    out = jetpack("events", "--no-follow", "--json", "--since", events[7].time).stdout
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [9, 10]
    assert jetpack("events", "--no-follow", "--json", "--app", "nope").stdout == ""
    bad = jetpack("events", "--no-follow", "--since", "tomorrow", check=False)
    assert bad.returncode == 2
    assert "RFC 3339" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_no_follow_reports_an_expired_since(tmp_path: Path, db: StateDB) -> None:
    life_of_a_pod(db)
    trim_events(db, Retention(count=2, age=3600))
    proc = conf_for(tmp_path)("events", "--no-follow", "--since", "3", check=False)
    assert proc.returncode == 1
    assert "older than the retained log" in proc.stderr
    assert "re-list" in proc.stderr


def test_cli_follow_without_a_supervisor_says_how_to_start_one(
    tmp_path: Path, db: StateDB
) -> None:
    del db
    proc = conf_for(tmp_path)("events", check=False, timeout=30)
    assert proc.returncode == 1
    assert "no supervisor is running" in proc.stderr
    assert "jetpack daemon" in proc.stderr
    assert "Traceback" not in proc.stderr
