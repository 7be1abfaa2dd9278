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

from jetpack.errors import IsolationError
from jetpack.stage1 import capabilities, linux_init
from jetpack.stage1.seccomp import compile_filter, seccomp_filter

MAX_FDS = 16
MAX_REQUEST = 64 * 1024
SPARE_DELAY = 0.1  # seconds of quiet before the next spare is forked
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
    spare_due: float | None = time.monotonic()  # when to fork the next spare
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        timeout = None if spare_due is None else max(0, spare_due - time.monotonic()) * 1000
        events = poller.poll(timeout)
        if not events and spare_due is not None and not spares:
            spare_due = None
            spares.extend(_fork_spare())
        for fd, _ in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(replies, spares)
            elif not _serve_one(control, replies, spares):
                return 0
            else:
                spare_due = None if spares else time.monotonic() + SPARE_DELAY


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
               spares: list[_Spare]) -> bool:
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
        pid = _hand_to_spare(spares, argv, given)
        if pid is None:
            try:
                pid = os.fork()
            except OSError as exc:
                _send(reply, f"error cannot fork: {exc.strerror}")
                reply.close()
                return True
            if pid == 0:
                _run_helper(argv, given)  # never returns
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


def _fork_spare() -> list[_Spare]:
    """A new spare (none if the fork fails: requests are then forked for)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return []
    if pid == 0:
        _wait_as_spare(theirs)  # never returns
    theirs.close()
    return [_Spare(pid, ours)]


def _wait_as_spare(sock: socket.socket) -> None:
    """In a forked spare: everything a helper does before its request, then wait for it."""
    code = 1
    try:
        _undo_server_state()
        os.dup2(sock.fileno(), _SPARE_SOCKET)
        # The control socket, the running helpers' reply sockets, the wakeup pipe: gone.
        os.closerange(_SPARE_SOCKET + 1, _max_fd())
        waiting = socket.socket(fileno=_SPARE_SOCKET)
        message, fds, flags, _ = socket.recv_fds(waiting, MAX_REQUEST, MAX_FDS)
        if not message or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            code = 0  # the server ended (or sent nothing usable): nothing to do
            return
        argv = [str(arg) for arg in json.loads(message)]
        _run_helper(argv, fds, undone=True)  # never returns
    except BaseException:  # noqa: BLE001 - a forked child reports and exits, never returns
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


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


def _run_helper(argv: list[str], fds: list[int], *, undone: bool = False) -> None:
    """In the forked child: become what ``python -I -S linux_init.py ARGV`` was, then exit."""
    code = 1
    try:
        if not undone:
            _undo_server_state()
        # Out of the way first (a given fd may sit where another one goes), then in place.
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + MAX_FDS) for fd in fds]
        for target, fd in enumerate(moved):
            os.dup2(fd, target)
        # The control socket, the other helpers' reply sockets, the wakeup pipe (a spare's
        # socket): gone.
        os.closerange(len(moved), _max_fd())
        code = linux_init.main(argv)
    except BaseException:  # noqa: BLE001 - a forked child reports and exits, never returns
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _max_fd() -> int:
    return os.sysconf("SC_OPEN_MAX")
