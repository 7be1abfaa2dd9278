"""The daemon's stderr is JSON lines only, hypercorn's error log included (jetpack/log.py routes
the standard library's records through structlog's renderer); a real ``jetpack daemon``."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time

from jetpack.state import StateDB
from jetpack.store.pods import PodStore

from podhost import Host


def websocket(path: str, resource: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(f"GET {resource} HTTP/1.1\r\nHost: jetpack\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def text_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455, 5.2); ``text`` under 126 bytes."""
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + \
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_every_daemon_stderr_line_is_json_hypercorns_error_log_included(host: Host) -> None:
    host.start()
    # hypercorn logs "Error in ASGI Framework" when an app raises past it: the attach
    # websocket does on a resize frame whose rows are not a number (a tty pod needed)
    uuid = host.jp("prepare", "example.com/busybox", "--name", "term", "--exec",
                   "/bin/sh -c 'exec sleep 300'").stdout.split()[-1]
    db = StateDB.for_root(host.jp.root)
    try:
        store = PodStore(db)
        pod = store.get(uuid)
        with db.transaction() as tx:
            store.set_options(tx, pod, dataclasses.replace(pod.options, tty=True))
    finally:
        db.close()
    host.jp("start", "term")
    # a malformed request on the socket too: answered 400 by hypercorn
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(host.tmp / "jp.sock"))
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    sock = websocket(str(host.tmp / "jp.sock"), f"/v1/pods/{uuid}/attach")
    try:
        sock.sendall(text_frame('{"type": "resize", "rows": "many", "cols": 80}'))
        deadline = time.monotonic() + 30
        while "Error in ASGI Framework" not in host.log.read_text():
            assert time.monotonic() < deadline, host.log.read_text()
            time.sleep(0.1)
    finally:
        sock.close()
    host.jp("stop", "term")
    assert host.stop() == 0
    lines = host.log.read_text().splitlines()
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not_json == [], "\n".join(lines)
    records = [json.loads(line) for line in lines]
    (error,) = [r for r in records if r["event"] == "Error in ASGI Framework"]
    assert error["logger"] == "jetpack.hypercorn"
    assert error["level"] == "error"
    assert "ValueError" in error["exception"]  # the traceback, as one JSON string
    assert "timestamp" in error
    assert any(r["event"] == "supervisor ready" for r in records)
