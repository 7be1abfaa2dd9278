"""An app's terminal for ``run -t`` and ``attach``: the pty master held by the supervisor,
drained while the app runs (into a bounded scrollback, and to whoever is attached), written to
by the attached client, resized on request.

Slow-client policy: each attached client has a queue of ``CLIENT_QUEUE`` chunks; a client that
falls that far behind is detached (the app never waits for it); it may attach again and gets
the scrollback first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import Iterator

import trio

SCROLLBACK = 64 * 1024
CLIENT_QUEUE = 256


class PtyRelay:
    def __init__(self, master_fd: int) -> None:
        self.master = master_fd
        os.set_blocking(master_fd, False)
        self.scrollback = bytearray()
        self.clients: set[trio.MemorySendChannel[bytes]] = set()
        self.ended = trio.Event()

    async def pump(self) -> None:
        """Copy the app's output until its side of the pty is gone (run while it runs)."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self.master)
                try:
                    data = os.read(self.master, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every slave descriptor is closed, the app is gone
                    break
                if not data:
                    break
                self.scrollback += data
                del self.scrollback[:-SCROLLBACK]
                for client in list(self.clients):
                    try:
                        client.send_nowait(data)
                    except trio.WouldBlock:
                        self.clients.discard(client)
                        client.close()
        finally:
            self.ended.set()
            for client in list(self.clients):
                client.close()
            self.clients.clear()

    @contextlib.contextmanager
    def attach(self) -> Iterator[tuple[bytes, trio.MemoryReceiveChannel[bytes]]]:
        """The scrollback so far and a channel of what follows."""
        send, receive = trio.open_memory_channel[bytes](CLIENT_QUEUE)
        self.clients.add(send)
        try:
            yield bytes(self.scrollback), receive
        finally:
            self.clients.discard(send)
            send.close()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self.master)
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[written:]

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        if self.master >= 0:
            trio.lowlevel.notify_closing(self.master)
            os.close(self.master)
            self.master = -1
