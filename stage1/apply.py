"""Applying an app's isolator plan in its own process, just before exec (Linux): credentials,
capabilities, no_new_privs and seccomp, in the one order that works for root and non-root.

``isolated_launcher`` gives stage2's executor a launcher that does this for the app and its
event handlers; everything is imported and loaded before pivot_root hides the host.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from jetpack.stage1.capabilities import apply_capabilities, keep_capabilities, no_new_privileges
from jetpack.stage1.seccomp import SeccompFilter, _libseccomp, apply_seccomp
from jetpack.stage2.executor import Launcher
from jetpack.stage2.plan import ExecPlan


def plan_to_json(capabilities: frozenset[str], seccomp: SeccompFilter | None,
                 no_new_privs: bool) -> dict[str, Any]:
    return {
        "capabilities": sorted(capabilities),
        "seccomp": None if seccomp is None else {
            "mode": seccomp.mode, "syscalls": sorted(seccomp.syscalls), "errno": seccomp.errno},
        "no_new_privileges": no_new_privs,
    }


def join_cgroups(directories: Sequence[str]) -> None:
    """Move this process (the app's monitor, before it starts anything) into the pod's cgroups."""
    for directory in directories:
        with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
            procs.write("0")


def isolated_launcher(isolators: Mapping[str, Any]) -> Launcher | None:
    """A launcher applying ``isolators`` (AppSpec.isolators); None when there is nothing to
    apply (then stage2's plain launcher is used)."""
    if not isolators:
        return None
    capabilities = isolators.get("capabilities")
    nnp = bool(isolators.get("no_new_privileges"))
    raw = isolators.get("seccomp")
    seccomp = None if raw is None else SeccompFilter(raw["mode"], frozenset(raw["syscalls"]),
                                                     raw.get("errno"))
    if seccomp is not None:
        _libseccomp()  # load the library now: after pivot_root it cannot be found

    def launch(argv: Sequence[str], plan: ExecPlan, stdin: int, stdout: int, stderr: int
               ) -> subprocess.Popen[bytes]:
        creds = plan.credentials

        def before_exec() -> None:
            os.setgroups(list(creds.groups))
            os.setgid(creds.gid)
            if capabilities is not None and creds.uid != 0:
                keep_capabilities()
            os.setuid(creds.uid)
            if capabilities is not None:
                apply_capabilities(capabilities,
                                   keep_sys_admin_until_exec=seccomp is not None and not nnp)
            if nnp:
                no_new_privileges()
            if seccomp is not None:
                apply_seccomp(seccomp, no_new_privs=nnp)

        return subprocess.Popen(
            list(argv), env=dict(plan.environment), cwd=plan.working_directory,
            stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True,
            preexec_fn=before_exec,  # noqa: PLW1509  # the monitor is single-threaded
        )

    return launch
