"""``jetpack ps`` under the Linux driver: the processes in a pod's network namespace, each named
after the app whose pid namespace holds it. Reads /proc only; synchronous."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def linux_processes(data: Mapping[str, Any], monitors: Mapping[str, int | None]
                    ) -> list[dict[str, Any]]:
    """Rows ``{pid, app, command}`` for the pod whose sandbox ``data`` this is; ``monitors``
    maps each app to its monitor's pid (whose pid namespace is the app's)."""
    net = (data.get("namespaces") or {}).get("net")
    if not net or not os.path.exists(net):
        return []
    inode = os.stat(net).st_ino
    pid_ns = {}
    for name, pid in monitors.items():
        if pid:
            try:
                pid_ns[os.stat(f"/proc/{pid}/ns/pid").st_ino] = name
            except OSError:
                continue
    rows = []
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: (len(p.name), p.name)):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != inode:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
            app = pid_ns.get(os.stat(entry / "ns" / "pid_for_children").st_ino) or \
                pid_ns.get(os.stat(entry / "ns" / "pid").st_ino, "-")
        except OSError:
            continue
        rows.append({"pid": int(entry.name), "app": app, "command": cmd})
    return rows
