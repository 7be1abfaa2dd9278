"""Shared state of the FreeBSD stand-ins: which jails exist, what is nullfs-mounted, every call.

State lives in ``$JETPACK_STANDIN_STATE`` (a directory, set by the wrappers that
jetpack.testing.freebsd_standins writes, so it survives jexec's clean environment); each call
is appended to ``calls.jsonl`` there so tests can assert the exact command lines.
Access is serialized with flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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


def record(tool: str, argv: list[str]) -> None:
    with (state_dir() / "calls.jsonl").open("a") as log:
        log.write(json.dumps([tool, *argv]) + "\n")


@contextlib.contextmanager
def state() -> Iterator[dict[str, Any]]:
    path = state_dir() / "state.json"
    with (state_dir() / "state.lock").open("w") as lock:
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
