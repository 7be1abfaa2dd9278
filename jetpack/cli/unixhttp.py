"""HTTP/1.1 over the control socket with only ``socket``: the CLI's light transport.

``http.client`` would import ``email`` (its header parser) and ``ssl``, which together cost
more start-up time than ``jetpack status`` may spend in all (issue 18). One request per
connection (``Connection: close``); an answer's body is read by ``Content-Length``, chunked
transfer coding (the supervisor's streamed ``/run``), or to the end of the connection.
Anything malformed is a ``ProtocolError``, an ``OSError`` as a broken connection is.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)

if TYPE_CHECKING:
    from io import BufferedReader

MAX_LINE = 65536
MAX_HEADERS = 100


class ProtocolError(OSError):
    """The peer's answer is not HTTP/1.x as this client reads it."""


class ReplyStream:
    """An answer's status, headers (names lowercased) and body, read from ``stream``."""

    def __init__(self, stream: BufferedReader) -> None:
        self._file = stream
        status_line = self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {status_line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()
        else:
            raise ProtocolError("too many header lines")
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left: int | None = None  # bytes left of the body (None: to the end)
        if not self._chunked and length is not None:
            if not length.isdigit():
                raise ProtocolError(f"bad Content-Length {length!r}")
            self._left = int(length)
        self._buffer = b""  # decoded body bytes read ahead of readline()
        self._done = False

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def _line(self) -> bytes:
        line: bytes = self._file.readline(MAX_LINE + 1)
        if not line:
            raise ProtocolError("connection closed before the answer was complete")
        if len(line) > MAX_LINE:
            raise ProtocolError("answer line too long")
        return line

    def _more(self) -> bytes:
        """The next piece of the decoded body; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                self._done = True
                return b""
            data = self._exactly(size)
            if self._line() not in (b"\r\n", b"\n"):
                raise ProtocolError("chunk not followed by CRLF")
            return data
        if self._left is not None:
            if self._left == 0:
                self._done = True
                return b""
            data = self._file.read1(min(self._left, 65536))
            if not data:
                raise ProtocolError("connection closed inside the answer's body")
            self._left -= len(data)
            return bytes(data)
        data = self._file.read1(65536)
        if not data:
            self._done = True
        return bytes(data)

    def _exactly(self, size: int) -> bytes:
        data: bytes = self._file.read(size)
        if len(data) != size:
            raise ProtocolError("connection closed inside a chunk")
        return data

    def read(self) -> bytes:
        """The rest of the body."""
        pieces = [self._buffer]
        self._buffer = b""
        while piece := self._more():
            pieces.append(piece)
        return b"".join(pieces)

    def readline(self) -> bytes:
        """The body's next line (with its newline; the last may lack one); b"" at the end."""
        while b"\n" not in self._buffer:
            piece = self._more()
            if not piece:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"


class UnixHTTPConnection:
    """One HTTP/1.1 exchange on the AF_UNIX socket at ``path`` (``timeout`` in seconds for
    each socket operation, or None)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._file: BufferedReader | None = None

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = sock
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        fields = {"Host": "jetpack", "Connection": "close", **(headers or {})}
        if body is not None or method in ("POST", "PUT", "PATCH"):
            fields["Content-Length"] = str(len(body or b""))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
        sock.sendall(head.encode("latin-1") + (body or b""))

    def getresponse(self) -> ReplyStream:
        if self.sock is None:
            raise ProtocolError("no request was sent")
        self._file = self.sock.makefile("rb")
        return ReplyStream(self._file)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
