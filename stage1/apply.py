"""Applying an app's isolator plan in its own process, just before exec (Linux): its own
session, credentials, capabilities, no_new_privs and seccomp, in the one order that works for
root and non-root.

``isolated_launcher`` gives stage2's executor a launcher that does this for the app, its event
handlers and whatever ``exec``/``console``/``build`` runs in it, and a preparer that forks the
app's own process before its go (all but seccomp done while it waits); an app whose manifest
has no isolator gets the default plan, never none. Everything is imported and loaded before
pivot_root hides the host; the seccomp program is compiled then too (once per plan and process:
the fork server compiles the default plan's), so that the child between fork and exec makes only
its system calls.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import termios
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from jetpack.errors import IsolationError
from jetpack.stage1 import capabilities as caps
from jetpack.stage1.capabilities import (
    apply_capabilities,
    capability_set,
    keep_capabilities,
    no_new_privileges,
)
from jetpack.stage1.seccomp import SeccompFilter, compile_filter, seccomp_filter
from jetpack.stage2.credentials import Credentials
from jetpack.stage2.executor import FORWARDED, Child
from jetpack.stage2.plan import ExecPlan
from jetpack.stage2.socket_activation import (
    await_exec,
    open_listening,
    report_failure,
    spawn_listening,
)


def plan_to_json(capabilities: frozenset[str], seccomp: SeccompFilter | None,
                 no_new_privs: bool, *, ambient: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "capabilities": sorted(capabilities),
        "ambient_capabilities": sorted(ambient),
        "seccomp": None if seccomp is None else {
            "mode": seccomp.mode, "syscalls": sorted(seccomp.syscalls), "errno": seccomp.errno},
        "no_new_privileges": no_new_privs,
    }


def default_plan() -> dict[str, Any]:
    """What an app without any isolator gets (appc's 14 capabilities, the default seccomp
    filter), as JSON; also for an app spec stored without a plan."""
    return plan_to_json(capability_set(), seccomp_filter(), False)


def join_cgroups(directories: Sequence[str]) -> None:
    """Move this process (the app's monitor, before it starts anything) into the pod's cgroups."""
    for directory in directories:
        with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
            procs.write("0")


class CgroupJoin:
    """This process (the app's monitor) moving into the pod's cgroups in a thread of its own,
    started before and waited for after the work it overlaps (the rootfs): ``wait`` before this
    process forks anything, so that the app and all it starts are in them from their first
    instruction (the pids and memory limits, the device policy).

    Why a thread: a write to cgroup.procs takes cgroup_threadgroup_rwsem for writing
    (cgroup_attach_lock -> percpu_down_write), and a percpu rwsem's writer first waits for an
    RCU grace period (rcu_sync_enter -> synchronize_rcu) unless another writer passed within
    the last one. Measured here (kernel 6.18, v1 hierarchies): 5-15 ms for the first hierarchy,
    0.05 ms for each next. The thread sleeps in the kernel meanwhile; nothing the rootfs build
    does waits for that lock (only fork, exit and exec take it, as readers). "0" names the
    writer's whole thread group: the process moves, not the thread. The files are opened here,
    in the caller: pivot_root would hide their paths from the thread.
    """

    def __init__(self, directories: Sequence[str]) -> None:
        self._files: list[tuple[str, int]] = []
        self._error: tuple[str, OSError] | None = None
        try:
            for directory in directories:
                self._files.append((directory, os.open(os.path.join(directory, "cgroup.procs"),
                                                       os.O_WRONLY | os.O_CLOEXEC)))
        except OSError:
            self._close()
            raise
        # Held by the thread until it is done. A bare thread: threading.Thread.start would
        # wait until the new thread runs (its wake-up, 1-1.5 ms on a busy host, on the path of
        # every start); nothing here needs it running before the rootfs is built.
        self._done = threading.Lock()
        if self._files:
            self._done.acquire()
            try:
                _thread.start_new_thread(self._join, ())
            except BaseException:
                self._done.release()
                self._close()
                raise

    def _join(self) -> None:
        try:
            for directory, fd in self._files:
                try:
                    os.write(fd, b"0")
                except OSError as exc:
                    self._error = (directory, exc)
                    return
        finally:
            self._done.release()  # its last step: nothing of it runs on but its return

    def wait(self) -> None:
        """Return once this process is in every cgroup; raise if it could not join one."""
        with self._done:
            pass
        self._close()
        if self._error is not None:
            directory, exc = self._error
            raise IsolationError(f"cannot join cgroup {directory}: {exc.strerror}")

    def _close(self) -> None:
        for _, fd in self._files:
            os.close(fd)
        self._files = []


class IsolatedLauncher:
    """Starts the processes of an app (the app, its handlers, ``exec``) under an isolator plan:
    a ``Launcher``; ``prepare`` makes the app's own process before its start (a ``Preparer``)."""

    def __init__(self, isolators: Mapping[str, Any]) -> None:
        if not isolators:
            isolators = default_plan()
        raw_capabilities = isolators.get("capabilities")
        self.capabilities = (capability_set() if raw_capabilities is None
                             else frozenset(raw_capabilities))
        self.ambient = frozenset(isolators.get("ambient_capabilities") or ())
        self.nnp = bool(isolators.get("no_new_privileges"))
        raw = isolators.get("seccomp")
        seccomp = None if raw is None else SeccompFilter(raw["mode"], frozenset(raw["syscalls"]),
                                                         raw.get("errno"))
        # libseccomp and libc are loaded now: after pivot_root they cannot be found.
        self.compiled = None if seccomp is None else compile_filter(seccomp)
        caps.preload()

    def confine(self, creds: Credentials) -> None:
        """In the child: everything but seccomp (its session is made already)."""
        # subprocess made this a new session leader: with a terminal for stdin, that
        # terminal becomes the session's own (job control in run -t, console), never
        # one shared with the supervisor or the caller.
        if os.isatty(0):
            # best effort: a terminal that is another session's stays that session's
            with contextlib.suppress(OSError):
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.setgroups(list(creds.groups))
        os.setgid(creds.gid)
        if creds.uid != 0:
            keep_capabilities()  # to drop the bounding set and load seccomp after setuid
        os.setuid(creds.uid)
        apply_capabilities(self.capabilities, ambient=self.ambient,
                           keep_sys_admin_until_exec=self.compiled is not None and not self.nnp)
        if self.nnp:
            no_new_privileges()

    def seal(self) -> None:
        """In the child, last before exec: the seccomp filter."""
        if self.compiled is not None:
            self.compiled.load(no_new_privs=self.nnp)

    def __call__(self, argv: Sequence[str], plan: ExecPlan, stdin: int, stdout: int,
                 stderr: int) -> Child:
        creds = plan.credentials

        def before_exec() -> None:
            self.confine(creds)
            self.seal()

        if plan.listen:
            # opened here, in the pod's network namespace, and kept only by the app
            sockets = open_listening(plan.listen)
            try:
                return spawn_listening(argv, plan.environment, plan.working_directory,
                                       stdio=(stdin, stdout, stderr), sockets=sockets,
                                       before_exec=before_exec)
            finally:
                for sock in sockets:
                    sock.close()
        return subprocess.Popen(
            list(argv), env=dict(plan.environment), cwd=plan.working_directory,
            stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True,
            start_new_session=True,  # kill 0 in a pod reaches only its own session
            preexec_fn=before_exec,  # noqa: PLW1509  # the monitor is single-threaded
        )

    def prepare(self, argv: Sequence[str], plan: ExecPlan, stdin: int, stdout: int,
                stderr: int) -> PreparedChild:
        """The app's process forked now and confined as ``__call__``'s would be (session,
        stdio, cwd, credentials, capabilities, no_new_privs), blocked until ``release``; it
        then loads seccomp (last: its wait is not filtered) and execs. It is made after the
        rootfs and the cgroups (inside them from its first instruction); a release pipe that
        closes without a byte (cancel, or the monitor gone) makes it exit, never exec."""
        release_r, release_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            for fd in (release_r, release_w, report_r, report_w):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover  # the child: measured by what the app sees
            self._prepared_child(argv, plan, (stdin, stdout, stderr), release_r, report_w)
        os.close(release_r)
        os.close(report_w)
        return PreparedChild(pid, release_w, report_r)

    def _prepared_child(self, argv: Sequence[str], plan: ExecPlan, stdio: tuple[int, int, int],
                        release: int, report: int) -> NoReturn:
        try:
            signal.set_wakeup_fd(-1)
            # The monitor's handlers: the app's defaults instead while it waits (restore_signals
            # as Popen's for SIGPIPE and SIGXFSZ, which Python ignores).
            for signum in (*FORWARDED, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            # Everything moved above 0-2 first, so that no dup2 clobbers a later source.
            release = fcntl.fcntl(release, fcntl.F_DUPFD_CLOEXEC, 3)
            report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, 3)
            sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
            for target, fd in enumerate(sources):
                os.dup2(fd, target)  # inheritable: dup2 clears close-on-exec
            low, high = sorted((release, report))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
            os.setsid()  # kill 0 in a pod reaches only its own session
            os.chdir(plan.working_directory)
            self.confine(plan.credentials)
            # Everything exec needs is built now: after seal, only execve (as Popen's child).
            args, environment = list(argv), dict(plan.environment)
            paths = [argv[0]] if os.path.dirname(argv[0]) else [
                os.path.join(directory, argv[0]) for directory in os.get_exec_path(environment)]
            if os.read(release, 1):
                self.seal()
                _exec_first(paths, args, environment)
        except BaseException as exc:  # noqa: BLE001  # nothing may unwind into the monitor's code
            report_failure(report, exc)
        finally:
            os._exit(127)


def _exec_first(paths: Sequence[str], args: list[str], environment: dict[str, str]) -> None:
    """exec the first of ``paths`` that runs: the PATH lookup of ``os.execvpe`` and Popen
    (the plan's PATH), whose error is the first one other than ENOENT/ENOTDIR, else the last."""
    first: OSError | None = None
    last: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    for path in paths:
        try:
            os.execve(path, args, environment)  # noqa: S606  # the image's argv, no shell
        except OSError as exc:
            last = exc
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and first is None:
                first = exc
    raise first or last


@dataclass
class PreparedChild:
    """The app's process ``IsolatedLauncher.prepare`` made, waiting on ``release_fd``; it
    reports an errno on ``report_fd`` if it fails before its exec, which closes it."""

    pid: int
    release_fd: int
    report_fd: int
    returncode: int | None = None

    def release(self) -> PreparedChild:
        """Let it exec; return once it has (OSError, the child reaped, if it could not)."""
        try:
            with contextlib.suppress(BrokenPipeError):  # gone already: its report says why
                os.write(self.release_fd, b"g")
        finally:
            os.close(self.release_fd)
        await_exec(self.pid, self.report_fd)
        return self

    def cancel(self) -> None:
        """It exits without exec (its release pipe closes unwritten); reaped here."""
        os.close(self.release_fd)
        os.close(self.report_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def isolated_launcher(isolators: Mapping[str, Any]) -> IsolatedLauncher:
    """A launcher applying ``isolators`` (AppSpec.isolators, the default plan when empty)."""
    return IsolatedLauncher(isolators)
