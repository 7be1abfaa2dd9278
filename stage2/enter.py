"""Becoming the app in the process that execs it: enter the isolation (a callable the platform
gives), then the plan's working directory, exact groups, gid, uid and environment, and execve.

The FreeBSD driver's helper runs this after jail_attach(2); a launcher on the host side starts
the helper and learns of a failed exec through a close-on-exec pipe, as subprocess does.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import NoReturn

from jetpack.stage2.executor import Launcher
from jetpack.stage2.plan import ExecPlan


def _find_program(name: str, env: dict[str, str]) -> str:
    """execvp(3)'s lookup, with the app's PATH (the app's environment, not ours)."""
    if "/" in name:
        return name
    error: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    for directory in env.get("PATH", "").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), candidate)
    raise error


def exec_plan(argv: Sequence[str], plan: ExecPlan, enter: Callable[[], None],
              error_fd: int) -> NoReturn:
    """Enter, take the plan's credentials and exec ``argv``; on failure write ``errno:step`` to
    ``error_fd`` (close-on-exec, so a successful exec closes it silently) and exit 127."""
    step = "enter"
    try:
        os.set_inheritable(error_fd, False)
        enter()
        step = "chdir"
        os.chdir(plan.working_directory)
        creds = plan.credentials
        step = "credentials"
        # Exactly appc's: the groups given (none of root's own), then gid, then uid last.
        os.setgroups(list(creds.groups))
        os.setgid(creds.gid)
        os.setuid(creds.uid)
        env = dict(plan.environment)
        step = "exec"
        # execve, not a shell: argv is the app's own, verbatim.
        os.execve(_find_program(argv[0], env), list(argv), env)  # noqa: S606 - see above
    except OSError as exc:
        code = exc.errno or errno.EINVAL
        os.write(error_fd, f"{code}:{step}".encode())
    os._exit(127)


def helper_launcher(helper: Sequence[str], request: dict[str, object]) -> Launcher:
    """A Launcher that runs ``helper`` (a command ending in the place for its request) for each
    process of the plan: it hands the helper the request as JSON and raises OSError in the
    caller when the helper could not become the app, as subprocess.Popen does."""

    def launch(argv: Sequence[str], plan: ExecPlan, stdin: int, stdout: int,
               stderr: int) -> subprocess.Popen[bytes]:
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        try:
            body = json.dumps({**request, "argv": list(argv), "plan": plan.to_json(),
                               "error_fd": error_w})
            child = subprocess.Popen([*helper, body], stdin=stdin, stdout=stdout,
                                     stderr=stderr, pass_fds=(error_w,), close_fds=True)
            os.close(error_w)
            error_w = -1
            report = b""
            while chunk := os.read(error_r, 256):
                report += chunk
        finally:
            os.close(error_r)
            if error_w >= 0:
                os.close(error_w)
        if report:
            child.wait()
            code, _, step = report.decode().partition(":")
            number = int(code) if code.isdigit() else errno.EINVAL
            raise OSError(number, f"{os.strerror(number)} ({step})", argv[0])
        return child

    return launch
