"""The Linux driver's fork server: one interpreter that has imported linux_init (and stage2, and
loaded libseccomp) once, and forks a helper for each sandbox and app instead of starting one.

Started by forkserver_client.py (``python -I -S -c ... serve``) with its control socket's fd;
single-threaded, so fork is safe here as it is not in the trio supervisor. Standard library and
stage1/stage2 only, like linux_init.

Protocol, on SOCK_SEQPACKET sockets (one record per message):
    control  <- JSON ``{"argv": [...]}`` with fds [REPLY, STDIN, STDOUT, STDERR, EXTRA...]
    REPLY    -> ``pid N`` once the helper is forked (or ``error TEXT``), then ``exit CODE`` when
                it ended (CODE as subprocess's returncode: -N for signal N)
The helper runs ``linux_init.main(argv)`` in a session of its own, with STDIN/STDOUT/STDERR as
0/1/2, EXTRA as 3, 4, ..., and no other descriptor; the server's signal dispositions and mask
are undone first. EOF on the control socket (its owner closed it or died) ends the server; the
helpers it forked (and the apps' monitors, which are never its children) run on.

A fork of this interpreter, and the new child's first steps, cost 2-4 ms on a busy host; an app
start waited for them. So the server keeps one helper forked in advance (a spare: signals
undone, its own session, holding only the socket it waits on) and hands a request to it, then
forks the next spare once it has been idle for ``SPARE_DELAY`` (not while the helper it just
started competes for the CPU). A request finding no spare (a burst, the spare died) is forked
for as before. The spare ends when the server does (EOF on its socket).

An app's request goes to an app's monitor made in advance instead (``_MonitorInAdvance``: pid 1
of a new pid namespace, waiting as a spare does, made at the same time): the server answers
``pid N`` (the monitor's) and ``exit 0`` at once, as for a helper that forked its monitor and
ended; the monitor then reports on the EXTRA pipes, as the helper and its monitor did.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from jetpack.errors import IsolationError
from jetpack.stage1 import capabilities, linux_init
from jetpack.stage1 import linux_sys as sysc
from jetpack.stage1.seccomp import compile_filter, seccomp_filter

MAX_FDS = 16
MAX_REQUEST = 64 * 1024
# Seconds of quiet after a request before the next spare and monitor are forked: the
# helper or monitor it started does its own work (8-12 ms here, from the request to its
# report) without that fork beside it on the CPU, and a start that comes later than this
# finds its monitor made (at 0.1 s, one of three sequential starts found none).
SPARE_DELAY = 0.025
_MONITOR_PID_TIMEOUT = 2.0  # seconds; the process in between sends it right after its fork
_STDIO = 3  # stdin, stdout, stderr after the reply socket
_SPARE_SOCKET = 3  # where a spare keeps its socket while it waits


class _Spare:
    """A helper forked in advance, waiting on ``sock`` for its request."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


def serve(control_fd: int) -> int:
    """Fork a helper per request until the control socket ends."""
    # Whatever the owner left inheritable at exec is not ours to hold (or to pass on).
    os.closerange(control_fd + 1, _max_fd())
    control = socket.socket(fileno=control_fd)
    _preload()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_DFL, which drops the signal) so that the wakeup fd hears of each child.
    signal.signal(signal.SIGCHLD, _on_child)
    replies: dict[int, socket.socket] = {}
    spares: list[_Spare] = []  # at most one
    monitors: list[_MonitorInAdvance] = []  # at most one
    spare_due: float | None = time.monotonic()  # when to fork the next spare and monitor
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        timeout = None if spare_due is None else max(0, spare_due - time.monotonic()) * 1000
        events = poller.poll(timeout)
        if not events and spare_due is not None:
            spare_due = None
            if not spares:
                spares.extend(_fork_spare())
            if not monitors:
                monitors.extend(_MonitorInAdvance.fork())
        for fd, _ in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(replies, spares)
            elif not _serve_one(control, replies, spares, monitors):
                return 0
            else:
                spare_due = None if spares and monitors else time.monotonic() + SPARE_DELAY


def _preload() -> None:
    """What every helper would load on its own: libseccomp (its lookup runs ldconfig), the
    default seccomp plan's BPF program (2 ms to build), libc for the capability calls."""
    with contextlib.suppress(IsolationError):
        default = seccomp_filter()
        assert default is not None
        compile_filter(default)
    capabilities.preload()
    # Everything imported so far lives as long as the server: keep the collector off it, so
    # that a forked helper does not copy the pages it would touch.
    gc.freeze()


def _on_child(signum: int, frame: object) -> None:
    del signum, frame


def _serve_one(control: socket.socket, replies: dict[int, socket.socket],
               spares: list[_Spare], monitors: list[_MonitorInAdvance]) -> bool:
    """Start the helper one request asks for; False at the end of the control socket."""
    message, fds, flags, _ = socket.recv_fds(control, MAX_REQUEST, MAX_FDS)
    if not message and not fds:
        return False
    if not fds:
        return True  # nowhere to answer
    reply = socket.socket(fileno=fds[0])
    given = fds[1:]
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(given) < _STDIO:
            _send(reply, "error malformed request")
            reply.close()
            return True
        try:
            argv = [str(arg) for arg in json.loads(message)["argv"]]
        except (ValueError, KeyError, TypeError):
            _send(reply, "error malformed request")
            reply.close()
            return True
        if argv[:1] == ["app"] and monitors and (pid := monitors.pop().take(argv, given)):
            # The helper's part is the monitor's own: done as far as the owner waits for it.
            _send(reply, f"pid {pid}")
            _send(reply, "exit 0")
            reply.close()
            return True
        pid = _hand_to_spare(spares, argv, given)
        if pid is None:
            try:
                pid = os.fork()
            except OSError as exc:
                _send(reply, f"error cannot fork: {exc.strerror}")
                reply.close()
                return True
            if pid == 0:
                _run_helper(argv, given)
        _send(reply, f"pid {pid}")
        replies[pid] = reply
        return True
    finally:
        for fd in given:
            os.close(fd)


def _hand_to_spare(spares: list[_Spare], argv: list[str], fds: list[int]) -> int | None:
    """The spare's pid once it has the request (its own copies of ``fds``); None without a
    live spare."""
    while spares:
        spare = spares.pop()
        try:
            socket.send_fds(spare.sock, [json.dumps(argv).encode()], fds)
        except OSError:
            continue  # it died (its exit is reaped as any child's)
        finally:
            spare.sock.close()
        return spare.pid
    return None


def _fork_waiting(child: Callable[[socket.socket], NoReturn]
                  ) -> tuple[int, socket.socket] | None:
    """Fork a process that runs ``child`` (which never returns) with its end of a new socket
    pair: the child's pid and our end, or None when the fork fails."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        child(theirs)  # never returns
    theirs.close()
    return pid, ours


def _receive_request(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """In a process made in advance: keep only ``sock`` (the control socket, the running
    helpers' reply sockets, the wakeup pipe: gone) and wait on it for the request; None when
    the server ended (EOF, or a reset: it closed its end with a message of ours unread) or
    sent nothing usable."""
    os.dup2(sock.fileno(), _SPARE_SOCKET)
    os.closerange(_SPARE_SOCKET + 1, _max_fd())
    waiting = socket.socket(fileno=_SPARE_SOCKET)
    try:
        message, fds, flags, _ = socket.recv_fds(waiting, MAX_REQUEST, MAX_FDS)
    except ConnectionResetError:
        return None
    if not message or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        return None
    return message, fds


def _fork_spare() -> list[_Spare]:
    """A new spare (none if the fork fails: requests are then forked for)."""
    forked = _fork_waiting(_wait_as_spare)
    return [] if forked is None else [_Spare(*forked)]


def _wait_as_spare(sock: socket.socket) -> NoReturn:
    """In a forked spare: everything a helper does before its request, then wait for it."""

    def spare() -> int:
        _undo_server_state()
        request = _receive_request(sock)
        if request is None:
            return 0  # the server ended: nothing to do
        message, fds = request
        return _helper([str(arg) for arg in json.loads(message)], fds, undone=True)

    _as_child(spare)


class _MonitorInAdvance:
    """An app's monitor made in advance: pid 1 of a new pid namespace, waiting on ``sock`` for
    the app's request.

    A helper forked the monitor into a new pid namespace once it had joined the pod's
    namespaces: 1-3 ms of fork on the path of every start, and the wake-up of one more
    process. A pid namespace depends on nothing of the pod's, so the server makes it, and the
    process that will be its pid 1, while it is idle; the monitor joins the pod's namespaces
    and makes its mount namespace (a copy of the host's mounts as they are then) once it has
    the request, as the helper did. A process in between unshares the pid namespace (the
    server's own stays as it is), forks the monitor, sends its pid here and ends: the monitor
    is nobody's child, as one forked by a helper was (its adoption after a supervisor's
    restart does not depend on the server).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def fork(cls) -> list[_MonitorInAdvance]:
        """The new monitor (none if the fork fails: apps' requests are then served by a
        helper, as any other)."""
        forked = _fork_waiting(_make_monitor)
        return [] if forked is None else [cls(forked[1])]

    def take(self, argv: list[str], fds: list[int]) -> int | None:
        """Hand an app's request to the monitor: its pid (as the host sees it), or None if it
        could not be made or died meanwhile."""
        try:
            # Sent by the process in between as soon as it forked the monitor (so long ago,
            # unless requests come in a burst); none if it failed.
            self.sock.settimeout(_MONITOR_PID_TIMEOUT)
            pid = int(self.sock.recv(64))
            socket.send_fds(self.sock, [json.dumps({"argv": argv, "pid": pid}).encode()], fds)
        except (OSError, ValueError):
            return None
        finally:
            self.sock.close()
        return pid


def _make_monitor(sock: socket.socket) -> NoReturn:
    """In the process in between: a new pid namespace, its pid 1 forked to wait on ``sock``,
    the pid 1's host pid sent over ``sock`` to the server, then exit."""

    def in_between() -> int:
        _undo_server_state()
        sysc.unshare(sysc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _wait_as_monitor(sock)
        sock.send(str(pid).encode())
        return 0

    _as_child(in_between)


def _wait_as_monitor(sock: socket.socket) -> NoReturn:
    """In the monitor made in advance: wait for the app's request, then run it as the helper
    would (``linux_init.run_app`` knows it is pid 1 already)."""

    def monitor() -> int:
        received = _receive_request(sock)  # a reset: the server ended with our pid unread
        if received is None:
            return 0  # the server ended
        message, fds = received
        request = json.loads(message)
        return _helper([str(arg) for arg in request["argv"]], fds, undone=True,
                       pid_one=int(request["pid"]))

    _as_child(monitor)


def _reap(replies: dict[int, socket.socket], spares: list[_Spare]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for spare in [s for s in spares if s.pid == pid]:  # killed while it waited
            spares.remove(spare)
            spare.sock.close()
        reply = replies.pop(pid, None)
        if reply is not None:
            _send(reply, f"exit {os.waitstatus_to_exitcode(status)}")
            reply.close()


def _send(reply: socket.socket, line: str) -> None:
    # The owner may have given up on this helper (cancelled): nobody to tell.
    with contextlib.suppress(OSError):
        reply.send(line.encode())


def _undo_server_state() -> None:
    """The server's signal dispositions, mask and session: not a helper's."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.setsid()  # never the owner's session or process group, nor the server's


def _run_helper(argv: list[str], fds: list[int]) -> NoReturn:
    """In a child forked for a request: become what ``python -I -S linux_init.py ARGV`` was,
    then exit."""
    _as_child(lambda: _helper(argv, fds))


def _helper(argv: list[str], fds: list[int], *, undone: bool = False,
            pid_one: int | None = None) -> int:
    """The helper's work and its exit code (an app's monitor made in advance: with
    ``pid_one``, its pid on the host)."""
    if not undone:
        _undo_server_state()
    # Out of the way first (a given fd may sit where another one goes), then in place.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + MAX_FDS) for fd in fds]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
    # The control socket, the other helpers' reply sockets, the wakeup pipe (a spare's
    # socket): gone.
    os.closerange(len(moved), _max_fd())
    return linux_init.main(argv, pid_one=pid_one)


def _as_child(body: Callable[[], int]) -> NoReturn:
    """In a forked child: ``body`` and exit with its code (1, its traceback printed, when it
    raised), stdout and stderr flushed: never return into the server's stack."""
    code = 1
    try:
        code = body()
    except BaseException:  # noqa: BLE001 - a forked child reports and exits, never returns
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _max_fd() -> int:
    return os.sysconf("SC_OPEN_MAX")
