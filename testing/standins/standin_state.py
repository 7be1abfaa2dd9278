"""Shared state of the FreeBSD stand-ins: the jails (with their processes), the one mount table
that jail, mount, mount_nullfs and umount share, the kernel knobs (racct, pf), every call.

State lives in ``$JETPACK_STANDIN_STATE`` (a directory, set by the wrappers that
jetpack.testing.freebsd_standins writes, so it survives a clean environment); each call is
appended to ``calls.jsonl`` there so tests can assert the exact command lines.
Access is serialized with flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn


def state_dir() -> Path:
    value = os.environ.get("JETPACK_STANDIN_STATE")
    if not value:
        fail("stand-in", "JETPACK_STANDIN_STATE is not set (stand-ins only run under tests)")
    assert value is not None  # fail() does not return
    return Path(value)


def fail(tool: str, message: str, code: int = 1) -> NoReturn:
    print(f"{tool}: {message}", file=sys.stderr)
    sys.exit(code)


def pass_to_host(tool: str, argv: list[str]) -> NoReturn:
    """Run the Linux test host's own ``tool`` (its storage driver's overlay mounts are not the
    jail driver's: a jail test through the real supervisor still needs them). Only forms the
    stand-in does not model come here, and only where the host has the tool."""
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        path = os.path.join(directory, tool)
        if sys.platform.startswith("linux") and os.access(path, os.X_OK):
            os.execv(path, [tool, *argv])  # noqa: S606 - argv as given, no shell
    fail(tool, f"the jetpack stand-in does not model: {tool} {' '.join(argv)}")


def record(tool: str, argv: list[str]) -> None:
    with (state_dir() / "calls.jsonl").open("a") as log:
        log.write(json.dumps([tool, *argv]) + "\n")


@contextlib.contextmanager
def state(root: Path | None = None) -> Iterator[dict[str, Any]]:
    root = root or state_dir()
    path = root / "state.json"
    with (root / "state.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                                else {"jails": {}, "mounts": [], "next_jid": 1})
        yield data
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def find_jail(data: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """A jail by name or jid, as jexec/jls/jail -r accept either."""
    for name, jail in data["jails"].items():
        if name == ref or str(jail["jid"]) == ref:
            return {"name": name, **jail}
    return None


# --- processes ---------------------------------------------------------------------------------
# A process is in a jail once jail_attach(2) put it there (jexec(8), jail(8)'s exec.start, the
# driver's own attach): usr.sbin/jexec/jexec.c calls jail_attach() and then execs. Its children
# inherit the jail (sys/kern/kern_fork.c copies p_ucred, whose cr_prison is the jail), so the
# stand-in counts every descendant of a recorded process as in the jail too.


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def add_process(jail: dict[str, Any], pid: int) -> None:
    jail.setdefault("procs", []).append([pid, start_time(pid)])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rooted_in(path: str) -> list[int]:
    """Processes whose root directory is ``path``: every way into a stand-in jail chroots
    there, as jail_attach(2) does, and a reparented orphan keeps its root."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == path:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def jail_processes(jail: dict[str, Any]) -> list[int]:
    """The live pids in the jail: the recorded ones (not recycled), those rooted in its path
    (a process whose parent died is reparented but stays in its jail) and their descendants."""
    roots = [pid for pid, started in jail.get("procs", [])
             if started is not None and start_time(pid) == started]
    roots += _rooted_in(jail["params"]["path"])
    tree, found = _children(), []
    while roots:
        pid = roots.pop()
        if pid not in found and start_time(pid) is not None:
            found.append(pid)
            roots.extend(tree.get(pid, []))
    return found


def kill_jail(jail: dict[str, Any]) -> None:
    """jail_remove(2): "all jailed processes are killed" (jail(8), -r), with SIGKILL
    (sys/kern/kern_jail.c, prison_remove -> prison_deref kills with SIGKILL)."""
    for pid in jail_processes(jail):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- kernel knobs ------------------------------------------------------------------------------


def sysctl(root: Path | None = None) -> dict[str, str]:
    """The stand-in kernel's sysctls (kern.racct.enable, ...): sysctl.json over the defaults."""
    path = (root or state_dir()) / "sysctl.json"
    values = {"kern.racct.enable": "1", "security.jail.jailed": "0"}
    if path.exists():
        values.update(json.loads(path.read_text()))
    return values


def pf_loaded(root: Path | None = None) -> bool:
    """Whether pf.ko is loaded (/dev/pf exists); ``pf.absent`` in the state says it is not."""
    return not ((root or state_dir()) / "pf.absent").exists()
