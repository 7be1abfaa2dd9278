"""Socket activation (aci.md ``socketActivated``, sd_listen_fds(3)): the app's listening sockets
opened in the pod's network, then passed as descriptors 3, 4, ... with LISTEN_FDS and LISTEN_PID.

LISTEN_PID is the app's own pid, which only the child knows after fork: so the app is started
with fork and exec here rather than through subprocess (whose environment is fixed before fork).
Imported before the pivot into the app's rootfs, like the executor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def open_listening(ports: Sequence[tuple[str, int, int]]) -> list[socket.socket]:
    """One socket per port of each (protocol, port, count) range, bound on every address of the
    pod, in the order the app declares them (a tcp socket listening); OSError names the port."""
    sockets: list[socket.socket] = []
    try:
        for protocol, first, count in ports:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, _KINDS[protocol])
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("0.0.0.0", port))  # noqa: S104  # the pod's own network only
                except OSError as exc:
                    raise OSError(exc.errno, f"{protocol} port {port}: {exc.strerror}") from None
                if protocol == "tcp":
                    sock.listen(socket.SOMAXCONN)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class ListeningChild:
    """The app started by ``spawn_listening``: what the executor needs of a ``Popen``."""

    pid: int
    returncode: int | None = None


def spawn_listening(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, *, stdio: tuple[int, int, int],
    sockets: Sequence[socket.socket], before_exec: Callable[[], None],
) -> ListeningChild:
    """fork and exec ``argv`` in a new session with ``stdio`` as 0-2 and ``sockets`` as 3...;
    ``before_exec`` (credentials, isolators) runs in the child just before exec. An exec that
    fails raises OSError here, as ``Popen`` does."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child: measured by what the app sees
        _child(argv, env, cwd, stdio=stdio, sockets=[s.fileno() for s in sockets],
               before_exec=before_exec, report=report_w)
    os.close(report_w)
    await_exec(pid, report_r)
    return ListeningChild(pid)


def report_failure(report: int, exc: BaseException) -> None:
    """In a forked child before its exec: tell the parent why it failed, as the errno (EINVAL
    for what is no OSError) in 4 bytes on ``report``; ``report`` closed unwritten by the exec
    (close-on-exec) is the sign that the exec happened."""
    code = (exc.errno if isinstance(exc, OSError) else None) or errno.EINVAL
    with contextlib.suppress(OSError):
        os.write(report, code.to_bytes(4, "little"))


def await_exec(pid: int, report: int) -> None:
    """In the parent: return once the child ``pid`` has exec'd; if it reported a failure
    (``report_failure``) it is gone: reap it and raise that OSError. Closes ``report``."""
    try:
        data = os.read(report, 8)
    finally:
        os.close(report)
    if data:
        os.waitpid(pid, 0)
        code = int.from_bytes(data[:4], "little") or errno.EINVAL
        raise OSError(code, os.strerror(code))


def _child(argv: Sequence[str], env: Mapping[str, str], cwd: str, *, stdio: tuple[int, int, int],
           sockets: list[int], before_exec: Callable[[], None], report: int) -> None:
    try:
        floor = 3 + len(sockets)
        # Everything moved above the target range first, so no dup2 clobbers a later source.
        report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, floor)
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in (*stdio, *sockets)]
        for target, fd in enumerate(sources):
            os.dup2(fd, target)  # inheritable: dup2 clears close-on-exec
        os.closerange(floor, report)
        os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # as Popen's restore_signals
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.setsid()  # kill 0 in a pod reaches only its own session
        os.chdir(cwd)
        before_exec()
        environment = {**env, "LISTEN_FDS": str(len(sockets)), "LISTEN_PID": str(os.getpid())}
        os.execvpe(argv[0], list(argv), environment)  # noqa: S606  # the image's argv, no shell
    except BaseException as exc:  # noqa: BLE001  # nothing may unwind into the parent's code
        report_failure(report, exc)
    finally:
        os._exit(127)
