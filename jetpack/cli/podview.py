"""Pods as the CLI shows them: ``list``'s light read of the store (``sqlite3`` only: no
``jetpack.store``, no ``dataclasses``, so ``jetpack list`` starts in about the interpreter's own
time), short UUIDs, ages, and ``status POD``'s full view.
"""

from __future__ import annotations

import os
import sqlite3
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

DB_NAME = "jetpack.db"  # jetpack.state.db.DB_NAME (a test keeps them equal)
SHORT_UUID = 8
STATE_COLOURS = {"running": "green", "starting": "yellow", "stopping": "yellow",
                 "failed": "red", "exited": "dim"}


def read_pods(root: str) -> list[dict[str, Any]] | None:
    """Each pod's uuid, name, state, ip, created (unix time), boot, priority and apps
    (name, state, exit_status), oldest first, as ``PodStore.all()`` orders them; None when
    the database is missing or not as this reader expects (the caller falls back to the
    store, which explains or migrates). Reads only: no write lock, no migration."""
    path = os.path.join(root, DB_NAME)
    if not os.path.isfile(path):
        return None
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            pods = conn.execute("SELECT uuid, name, state, ip, created, boot, priority FROM pods"
                                " ORDER BY created, uuid").fetchall()
            apps = conn.execute("SELECT pod_uuid, name, state, exit_status FROM apps"
                                " ORDER BY rowid").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    by_pod: dict[str, list[dict[str, Any]]] = {}
    for pod_uuid, name, state, exit_status in apps:
        by_pod.setdefault(pod_uuid, []).append(
            {"name": name, "state": state, "exit_status": exit_status})
    return [{"uuid": uuid, "name": name, "state": state, "ip": ip, "created": created,
             "boot": bool(boot), "priority": priority, "apps": by_pod.get(uuid, [])}
            for uuid, name, state, ip, created, boot, priority in pods]


def short_uuids(uuids: list[str]) -> dict[str, str]:
    """Each UUID cut to ``SHORT_UUID`` characters, or longer where that would not name it
    alone among ``uuids`` (every pod command accepts a unique prefix)."""
    ordered = sorted(set(uuids))

    def common(a: str, b: str) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    short = {}
    for i, uuid in enumerate(ordered):
        shared = max(common(uuid, ordered[j]) for j in (i - 1, i + 1)
                     if 0 <= j < len(ordered)) if len(ordered) > 1 else 0
        short[uuid] = uuid[:max(SHORT_UUID, shared + 1)]
    return short


def age(stamp: float | None, now: float | None = None) -> str:
    """How long ago ``stamp`` was, as ``docker ps`` says it: ``12s ago``, ``5m ago``,
    ``3h ago``, ``2d ago``; ``-`` for none."""
    if stamp is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - stamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def apps_cell(apps: list[dict[str, Any]]) -> str:
    return ",".join(
        f"{a['name']}:{a['state']}"
        + (f"({a['exit_status']})" if a.get("exit_status") is not None else "")
        for a in apps)
