"""The caller's stdio for a command run inside a pod (``exec``, ``console``, ``build``), never
handing the pod a terminal: jetpack copies between the caller and pipes, or a pty of the pod's.

A terminal descriptor in a pod would let its processes inject keystrokes into the caller's
shell (TIOCSTI), change its modes or take it over as their controlling terminal. Pipes and
plain files pass through unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import tty
from collections.abc import Iterator

import trio

from jetpack.stage1.base import Stdio

_CHUNK = 64 * 1024
_EOF = b"\x04"  # Ctrl-D: the end of a non-terminal stdin, told to the pod's pty


async def _write_all(fd: int, data: bytes) -> None:
    """Write to ``fd`` even when it is non-blocking (a terminal shares O_NONBLOCK with the
    stdin that trio reads)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)


async def _copy_out(source: int, target: int) -> None:
    """Copy ``source`` (a pipe or pty master of ours) to ``target`` until EOF (EIO for a pty
    whose every slave is closed)."""
    os.set_blocking(source, False)
    while True:
        try:
            data = os.read(source, _CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(source)
            continue
        except OSError:
            return
        if not data:
            return
        await _write_all(target, data)


def _drain(source: int, target: int) -> None:
    """What ``source`` holds now, to ``target``: the command has ended, but a process it left
    in the pod may keep the pipe open, so EOF is not awaited."""
    os.set_blocking(source, False)
    with contextlib.suppress(OSError):
        while data := os.read(source, _CHUNK):
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(target, view):]
                except BlockingIOError:
                    os.set_blocking(target, True)  # briefly: the rest must not be lost
                    view = view[os.write(target, view):]
                    os.set_blocking(target, False)


async def _copy_in(source: int, target: int, *, eof: bytes | None) -> None:
    """Copy the caller's ``source`` to ``target`` (a pipe or a pty master) until EOF, then
    close a pipe, or send ``eof`` to a pty."""
    stream = trio.lowlevel.FdStream(os.dup(source))  # restores blocking mode when closed
    async with stream:
        while data := await stream.receive_some(_CHUNK):
            await _write_all(target, data)
    if eof is not None:
        await _write_all(target, eof)


class PipeRelay:
    """``stdio`` with each terminal replaced by a pipe; ``pod`` is what the pod gets."""

    def __init__(self, stdio: Stdio) -> None:
        self.caller = stdio
        self._ours: list[tuple[int, int, bool]] = []  # (our end, caller's fd, into the pod)
        self._theirs: list[int] = []
        ends = []
        for fd, into_pod in ((stdio.stdin, True), (stdio.stdout, False), (stdio.stderr, False)):
            if not os.isatty(fd):
                ends.append(fd)
                continue
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            ours, theirs = (write_end, read_end) if into_pod else (read_end, write_end)
            self._ours.append((ours, fd, into_pod))
            self._theirs.append(theirs)
            ends.append(theirs)
        self.pod = Stdio(*ends)

    def spawned(self) -> None:
        """The pod's ends now belong to the command: close ours, so EOFs arrive."""
        for fd in self._theirs:
            os.close(fd)
        self._theirs.clear()

    async def copy(self) -> None:
        """Copy until cancelled (the command's exit)."""
        async with trio.open_nursery() as nursery:
            for ours, caller, into_pod in self._ours:
                if into_pod:
                    nursery.start_soon(self._feed, caller, ours)
                else:
                    nursery.start_soon(_copy_out, ours, caller)

    async def _feed(self, caller: int, ours: int) -> None:
        try:
            await _copy_in(caller, ours, eof=None)
        except OSError:
            pass  # EPIPE: the command does not read its stdin
        self._ours = [entry for entry in self._ours if entry[0] != ours]
        os.close(ours)

    def finish(self) -> None:
        """After the command's exit: copy out what is left, close everything."""
        self.spawned()
        for ours, caller, into_pod in self._ours:
            if not into_pod:
                _drain(ours, caller)
            os.close(ours)
        self._ours.clear()


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[bool]:
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _copy_size(caller: int, master: int) -> None:
    with contextlib.suppress(OSError):
        cols, rows = os.get_terminal_size(caller)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def relay_terminal(master: int, stdio: Stdio, ended: trio.Event) -> None:
    """Relay between the caller's ``stdio`` (its terminal in raw mode) and ``master``, a pty
    of the pod's, until ``ended`` (the command's exit); then copy out what is left."""
    os.set_blocking(master, False)
    _copy_size(stdio.stdin, master)
    with _raw(stdio.stdin) as is_tty:
        async with trio.open_nursery() as nursery:

            async def keyboard() -> None:
                with contextlib.suppress(OSError):
                    await _copy_in(stdio.stdin, master, eof=None if is_tty else _EOF)

            async def screen() -> None:
                await _copy_out(master, stdio.stdout)

            async def window() -> None:
                with trio.open_signal_receiver(signal.SIGWINCH) as signals:
                    async for _ in signals:
                        _copy_size(stdio.stdin, master)

            nursery.start_soon(keyboard)
            nursery.start_soon(screen)
            if is_tty:
                nursery.start_soon(window)
            await ended.wait()
            nursery.cancel_scope.cancel()
        _drain(master, stdio.stdout)
