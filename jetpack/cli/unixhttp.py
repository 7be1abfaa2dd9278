"""``http.client`` on a unix socket: the CLI's light transport for the control API (imported
only by the commands that talk to the supervisor)."""

from __future__ import annotations

import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose ``connect()`` opens the AF_UNIX socket at ``path``."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("jetpack", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
