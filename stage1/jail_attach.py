"""Entering a jail for an app: the attach primitive (jail_attach(2) through libc on FreeBSD,
the stand-in's on test hosts) and the helper process that attaches and then becomes the app.

The helper is ``python -I -S -c BOOTSTRAP PACKAGE_ROOT REQUEST``: it attaches to the jail,
and stage2.enter sets the plan's exact credentials and environment and execs. Nothing of the
jail's login.conf, passwd database or group file is consulted (unlike jexec -U).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jetpack.errors import IsolationError

BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from jetpack.stage1.jail_attach import main; main(sys.argv[2])"
)
STANDIN_ENV = "JETPACK_STANDIN_STATE"


def default_attach() -> dict[str, str]:
    """How this host attaches: libc on FreeBSD; the stand-ins' attach where their state is set
    (tests of the jail driver on Linux); nothing elsewhere (start_app then fails clearly)."""
    if sys.platform == "freebsd":  # mypy narrows on sys.platform only
        return {"kind": "libc"}
    else:  # noqa: RET505 - an else block keeps mypy's per-platform runs free of unreachable code
        state = os.environ.get(STANDIN_ENV)
        return {"kind": "standin", "state": state} if state else {"kind": "none"}


def check_attach(spec: Mapping[str, str]) -> None:
    if spec.get("kind") not in ("libc", "standin"):
        raise IsolationError("jails exist on FreeBSD only: this host cannot enter one",
                             hint="use isolation.driver=linux here")


def libc_attach(jid: int) -> None:
    """jail_attach(2): the calling process joins jail ``jid``; its root and current
    directory become the jail's path."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.jail_attach(ctypes.c_int(jid)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def attach_function(spec: Mapping[str, str]) -> Callable[[int], None]:
    if spec.get("kind") == "libc":
        return libc_attach
    if spec.get("kind") == "standin":
        from jetpack.testing.freebsd_standins import attach

        state = Path(spec["state"])
        return lambda jid: attach(state, jid)
    raise OSError(errno.ENOSYS, "no jail_attach on this host")


def main(body: str) -> None:
    """The helper: attach to the request's jail, then stage2 does the rest (never returns)."""
    from jetpack.stage2.enter import exec_plan
    from jetpack.stage2.plan import ExecPlan

    request: dict[str, Any] = json.loads(body)
    attach = attach_function(request["attach"])
    jid = int(request["jid"])

    def enter() -> None:
        attach(jid)
        # The app jail's path is the app's rootfs: after jail_attach the app's root is the
        # jail's "/"; chroot there anyway so that the root is never anything else.
        os.chroot("/")

    exec_plan(request["argv"], ExecPlan.from_json(request["plan"]), enter,
              int(request["error_fd"]))
