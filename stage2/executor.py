"""The in-pod executor: pre-start handlers, the app, post-stop handlers, in order, in one rootfs.

It runs as the app's monitor (pid 1 of the app's pid namespace on Linux, after pivot_root; a host
process wrapping jexec on FreeBSD): it forwards stop signals to whichever child runs, reaps
orphans, copies output into the size-bounded log, and writes the final ExitStatus as JSON.
Everything it needs is imported before the pivot: nothing may be imported lazily in here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Protocol

from jetpack.stage2.plan import ExecPlan
from jetpack.stage2.status import ExitStatus

# Signals passed through to the running child; the first "stop" one also cancels what follows.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_CHUNK = 64 * 1024


class Child(Protocol):
    """A started process, as the executor follows it (a ``Popen``, or socket activation's)."""

    @property
    def pid(self) -> int: ...

    returncode: Any


# A launcher starts one process of the plan (the app or a handler) with the given stdio; the
# plan it gets for a handler has no ``listen`` ports (only the app is socket-activated).
Launcher = Callable[[Sequence[str], ExecPlan, int, int, int], Child]


class Prepared(Protocol):
    """The app's process made before its start, up to its exec: ``release`` lets it exec
    (OSError if it cannot, as a launcher's), ``cancel`` ends it without exec and reaps it."""

    def release(self) -> Child: ...

    def cancel(self) -> None: ...


# A preparer makes the app's process ahead of its start (same arguments as a launcher's).
Preparer = Callable[[Sequence[str], ExecPlan, int, int, int], Prepared]


def launch_directly(
    argv: Sequence[str], plan: ExecPlan, stdin: int, stdout: int, stderr: int
) -> subprocess.Popen[bytes]:
    """Linux: we already stand in the app's rootfs and namespaces; set credentials and exec."""
    creds = plan.credentials
    return subprocess.Popen(
        list(argv),
        env=dict(plan.environment),  # PATH lookup of argv[0] uses this env's PATH
        cwd=plan.working_directory,
        user=creds.uid,
        group=creds.gid,
        extra_groups=list(creds.groups),  # [] drops root's own groups: exactly the plan's
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        close_fds=True,
    )


TIMES_SUFFIX = ".times"
"""Beside ``NAME`` (and ``NAME.1``), ``NAME.times`` says when its bytes were written: lines of
``OFFSET UNIXTIME``, one per write at most every ``MARK_INTERVAL`` seconds, for ``jetpack logs
--timestamps`` and ``--since``. Best effort: the log itself never waits on it."""
MARK_INTERVAL = 0.001


class RotatingLog:
    """The app's log file: rotated to ``NAME.1`` past ``max_bytes``, so at most twice that on
    disk. Opened through a directory fd so rotation works after pivot_root hides the host.

    A full disk (or quota) never stops the app or its executor: output that cannot be written
    is dropped and counted, and the first write that succeeds again is preceded by a line
    saying how many bytes were lost and why (``dropped`` keeps the running total)."""

    def __init__(self, dir_fd: int, name: str, max_bytes: int) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.max_bytes = max(max_bytes, 1)
        self.fd = self._open(self.name, truncate=False)
        self.size = os.fstat(self.fd).st_size
        self.times_fd = self._open_times(truncate=False)
        self.last_mark = 0.0
        self.dropped = 0  # bytes lost to a full disk, in total
        self._unreported = 0  # of those, bytes no line in the log mentions yet
        self._why = ""

    def _open(self, name: str, *, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if truncate:
            flags |= os.O_TRUNC
        return os.open(name, flags, 0o640, dir_fd=self.dir_fd)

    def _open_times(self, *, truncate: bool) -> int | None:
        try:
            return self._open(self.name + TIMES_SUFFIX, truncate=truncate)
        except OSError:
            return None

    def _mark(self) -> None:
        now = time.time()
        if self.times_fd is None or now - self.last_mark < MARK_INTERVAL:
            return
        self.last_mark = now
        with contextlib.suppress(OSError):
            os.write(self.times_fd, f"{self.size} {now:.6f}\n".encode())

    def write(self, data: bytes) -> None:
        if self._unreported:
            notice = (f"jetpack: {self._unreported} bytes of output lost: {self._why}\n"
                      ).encode()
            if self._write(notice):
                self._drop(len(data))
                return
            self._unreported = 0
        self._drop(self._write(data))

    def _drop(self, count: int) -> None:
        if not count:
            return
        self.dropped += count
        self._unreported += count

    def _write(self, data: bytes) -> int:
        """Append ``data``; the number of its bytes a full disk kept out (0: all written)."""
        view = memoryview(data)
        try:
            if self.size and self.size + len(data) > self.max_bytes:
                os.close(self.fd)
                self.fd = -1
                os.replace(self.name, self.name + ".1", src_dir_fd=self.dir_fd,
                           dst_dir_fd=self.dir_fd)
                self.fd = self._open(self.name, truncate=True)
                self.size = 0
                if self.times_fd is not None:
                    os.close(self.times_fd)
                    self.times_fd = None
                    with contextlib.suppress(OSError):
                        os.replace(self.name + TIMES_SUFFIX, self.name + ".1" + TIMES_SUFFIX,
                                   src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                self.times_fd = self._open_times(truncate=True)
                self.last_mark = 0.0
            if self.fd < 0:
                self.fd = self._open(self.name, truncate=False)
                self.size = os.fstat(self.fd).st_size
            self._mark()
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.size += written
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._why = os.strerror(exc.errno).lower()
            return len(view)
        return 0

    def message(self, text: str) -> None:
        self.write(f"jetpack: {text}\n".encode())


@dataclass
class Output:
    """Where children's stdio goes: the log (through one pipe, so stdout and stderr keep their
    relative order) or the caller's own descriptors for a foreground run."""

    stdin: int
    stdout: int
    stderr: int
    log: RotatingLog | None = None
    pipe_r: int | None = None

    @classmethod
    def to_log(cls, log: RotatingLog) -> Output:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_end, False)
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return cls(stdin, write_end, write_end, log, read_end)

    def pump(self) -> None:
        """Copy what the pipe holds into the log, without blocking."""
        if self.pipe_r is None or self.log is None:
            return
        while True:
            try:
                data = os.read(self.pipe_r, min(_CHUNK, self.log.max_bytes))
            except BlockingIOError:
                return
            if not data:
                return
            self.log.write(data)

    def message(self, text: str) -> None:
        if self.log is not None:
            self.log.message(text)
        else:
            with contextlib.suppress(OSError):
                os.write(self.stderr, f"jetpack: {text}\n".encode())


class Executor:
    """Runs an ExecPlan to its end. One instance per app, in a single-threaded process."""

    def __init__(self, plan: ExecPlan, launch: Launcher, output: Output,
                 prepare: Preparer | None = None) -> None:
        self.plan = plan
        self.handler_plan = replace(plan, listen=())
        self.launch = launch
        self.output = output
        self._preparer = prepare
        self._prepared: Prepared | None = None
        self.current: Child | None = None
        self.stop_signal: int | None = None
        self._wakeup_r, wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, self._on_child)
        for signum in FORWARDED:
            signal.signal(signum, self._forward)

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame  # the wakeup fd does the work: select() returns

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum in STOPPING and self.stop_signal is None:
            self.stop_signal = signum
        child = self.current
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def prepare(self) -> None:
        """Make the app's process now, before its start, up to its exec (Linux: forked into
        its session with its stdio, credentials and capabilities): ``run`` then only lets it
        exec. Not for an app with pre-start handlers (they run before the app exists), socket
        activation (its ports open when it starts) or a terminal (which becomes the app's own
        when it starts); a fork that fails here leaves ``run`` to start the app as usual."""
        out = self.output
        if (self._preparer is None or self.plan.pre_start or self.plan.listen
                or self.stop_signal is not None or os.isatty(out.stdin)):
            return
        with contextlib.suppress(OSError):
            self._prepared = self._preparer(self.plan.argv, self.plan, out.stdin, out.stdout,
                                            out.stderr)

    def cancel(self) -> None:
        """The prepared process, if any, ends without exec and is reaped: the app never runs."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.cancel()

    def run(self) -> ExitStatus:
        try:
            return self._run()
        finally:
            self.cancel()

    def _run(self) -> ExitStatus:
        for handler in self.plan.pre_start:
            status = self._run_one(handler)
            if status != ExitStatus(code=0):
                self.output.message(f"pre-start handler {list(handler)} {status}")
                return ExitStatus(status.code, status.signal, failed=f"pre-start: {status}")
        if self.stop_signal is not None:
            self.cancel()
            status = ExitStatus(signal=self.stop_signal)
        else:
            status = self._run_one(self.plan.argv, main=True)
        for handler in self.plan.post_stop:
            after = self._run_one(handler, stoppable=False)
            if after != ExitStatus(code=0):
                self.output.message(f"post-stop handler {list(handler)} {after}")
        return status

    def _run_one(self, argv: Sequence[str], *, stoppable: bool = True, main: bool = False
                 ) -> ExitStatus:
        if stoppable and self.stop_signal is not None:
            if main:
                self.cancel()
            return ExitStatus(signal=self.stop_signal)
        out = self.output
        plan = self.plan if main else self.handler_plan
        prepared = self._prepared if main else None
        try:
            if prepared is not None:
                self._prepared = None
                child = prepared.release()
            else:
                child = self.launch(argv, plan, out.stdin, out.stdout, out.stderr)
        except OSError as exc:
            # ENOENT/EACCES as a shell would report them: 127 not found, 126 not executable.
            code = 127 if exc.errno == errno.ENOENT else 126
            out.message(f"cannot execute {argv[0]}: {exc.strerror}")
            return ExitStatus(code=code, failed=f"exec {argv[0]}: {exc.strerror}")
        self.current = child
        if stoppable and self.stop_signal is not None:
            # The stop arrived while the child was being spawned, before we could forward it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, self.stop_signal)
        try:
            status = self._wait_for(child.pid)
        finally:
            self.current = None
        child.returncode = status.code if status.code is not None else -(status.signal or 0)
        return status

    def _wait_for(self, pid: int) -> ExitStatus:
        watched = [self._wakeup_r] + ([self.output.pipe_r] if self.output.pipe_r is not None
                                      else [])
        while True:
            status = self._reap(pid)
            if status is not None:
                self.output.pump()
                return status
            readable, _, _ = select.select(watched, [], [])
            if self._wakeup_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_r, 512)
            self.output.pump()

    @staticmethod
    def _reap(pid: int) -> ExitStatus | None:
        """Reap every exited child (we may be pid 1: orphans land on us); ``pid``'s status."""
        found = None
        while True:
            try:
                reaped, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found
            if reaped == 0:
                return found
            if reaped == pid:
                found = ExitStatus.from_wait_status(wait_status)


def write_status(status_fd: int, status: ExitStatus) -> None:
    os.ftruncate(status_fd, 0)
    os.pwrite(status_fd, json.dumps(status.to_json()).encode(), 0)
