"""The Linux driver's side of its fork server (forkserver.py): started on first use and again
after it died, asked for one helper per sandbox or app, ended with its owner.

The server is started as a fresh, isolated interpreter (this threaded process never forks
without an exec), in a session of its own. Its only link to us is a socketpair: nobody else can
ask it for anything, and our exit (kill -9 too) closes it, which ends the server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import weakref
from collections.abc import Sequence
from pathlib import Path

import trio

import jetpack
from jetpack.errors import IsolationError

# -I -S: no site, no user paths; jetpack imported from exactly where this process did.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from jetpack.stage1.forkserver import serve; sys.exit(serve(int(sys.argv[2])))"
)
_PACKAGE_ROOT = str(Path(jetpack.__file__).resolve().parent.parent)
_SEND_RETRY = 0.001


class _Server:
    """One running server (our child) and our end of its control socket."""

    def __init__(self, python: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # subprocess (vfork + exec, as trio's run_process), not os.posix_spawn: glibc's
            # posix_spawn leaves its internal signals (32, 33) ignored, and apps would inherit
            # that. restore_signals resets SIGPIPE and SIGXFSZ as for any helper before.
            self.process = subprocess.Popen(
                [python, "-I", "-S", "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise IsolationError(f"cannot start the stage1 fork server {python}: "
                                 f"{exc.strerror}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self.control: socket.socket | None = ours

    def alive(self) -> bool:
        if self.control is not None and self.process.poll() is not None:
            self.control.close()
            self.control = None
        return self.control is not None

    def stop(self) -> None:
        """End it now (it holds nothing of any pod) and reap it."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ForkedHelper:
    """A helper asked of the server: its pid once the server answered (``forked``), and its
    exit code once it ended."""

    def __init__(self, name: str, reply: socket.socket) -> None:
        self.name = name
        self.pid: int | None = None
        self._reply = reply

    async def forked(self) -> int:
        """Its pid, once the server forked it (or handed the request to one made before)."""
        if self.pid is None:
            try:
                line = await _receive(self._reply)
            except BaseException:
                self.close()
                raise
            if not line.startswith("pid "):
                self.close()
                reason = line.removeprefix("error ") or "it ended before it answered"
                raise IsolationError(f"the stage1 fork server cannot start {self.name}: "
                                     f"{reason}")
            self.pid = int(line.split()[1])
        return self.pid

    async def wait(self) -> int:
        """The helper's exit code (-N: killed by signal N), as subprocess gives it."""
        await self.forked()
        line = await _receive(self._reply)
        self.close()
        if not line.startswith("exit "):
            raise IsolationError(f"the stage1 fork server lost helper {self.pid} ({line!r})")
        return int(line.split()[1])

    def close(self) -> None:
        self._reply.close()


class ForkServer:
    """The owner's handle; synchronous parts run on the trio thread (no blocking call)."""

    def __init__(self, python: str) -> None:
        self.python = python
        self._server: _Server | None = None

    @property
    def pid(self) -> int | None:
        """The running server's pid (None before its first use)."""
        return None if self._server is None else self._server.process.pid

    def start(self) -> None:
        """Start the server unless it runs: it imports while the first request waits in the
        socket's queue."""
        if self._server is not None and self._server.alive():
            return
        server = _Server(self.python)
        weakref.finalize(self, server.stop)
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    async def spawn(self, argv: Sequence[str], *, stdin: int, stdout: int, stderr: int,
                    pass_fds: Sequence[int] = ()) -> ForkedHelper:
        """Fork a helper running ``linux_init.main(argv)``; ``pass_fds`` become its 3, 4, ...
        Our descriptors stay ours (the server got copies): close them when convenient."""
        helper = await self.request(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                    pass_fds=pass_fds)
        await helper.forked()
        return helper

    async def request(self, argv: Sequence[str], *, stdin: int, stdout: int, stderr: int,
                      pass_fds: Sequence[int] = ()) -> ForkedHelper:
        """``spawn``'s request, sent; the server's answer (the helper's pid, or why there is
        none) is ``forked()``'s. Once the server has read it, it holds its own copies of the
        descriptors, until the helper has them or it failed to make one: a pipe passed here
        ends (EOF) for its reader once the helper and what it forks close it, or at once when
        no helper was made."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            with theirs:
                message = json.dumps({"argv": list(argv)}).encode()
                await self._send(message, [theirs.fileno(), stdin, stdout, stderr, *pass_fds])
        except BaseException:
            ours.close()
            raise
        return ForkedHelper(argv[0], ours)

    async def _send(self, message: bytes, fds: list[int]) -> None:
        for attempt in range(2):
            self.start()
            assert self._server is not None
            control = self._server.control
            assert control is not None
            try:
                while True:
                    try:
                        socket.send_fds(control, [message], fds)
                        break
                    except BlockingIOError:
                        # Full only while a new server still imports. A short sleep rather
                        # than wait_writable: concurrent starts share this socket.
                        await trio.sleep(_SEND_RETRY)
            except (BrokenPipeError, ConnectionResetError):
                # It died since we last looked (killed, crashed): a new one, once.
                self.close()
                if attempt:
                    raise IsolationError("the stage1 fork server ends at once") from None
                continue
            await trio.lowlevel.checkpoint()
            return


async def _receive(sock: socket.socket) -> str:
    """One message from the server ('' when it closed the socket, e.g. died)."""
    while True:
        try:
            return sock.recv(4096).decode(errors="replace")
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
