"""The metadata service under load: 50 keep-alive clients on loopback against
MetadataService served by hypercorn (as the supervisor serves it), for GET pod/uuid and POST
pod/hmac/sign.

Not a test. Run:  PYTHONPATH=. python bench/mds_bench.py [--clients 50] [--seconds 5]
The service runs in its own process (one trio loop, as in the supervisor) so that the clients,
raw trio sockets speaking HTTP/1.1 with keep-alive, do not share its core's time slices.
Prints requests/s, p50/p99 latency, and the server's RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
POD = str(uuid.UUID(int=0x0C6F1B0E5D3A4A539F3E2F1F6D8B7A90))


def serve_main() -> None:
    from jetpack.mds.service import (
        MetadataService,
        PodMetadata,
        PodRateLimit,
        StaticDirectory,
        serve,
    )

    directory = StaticDirectory()
    directory.by_address["127.0.0.1"] = PodMetadata(
        uuid=POD, token=TOKEN, manifest='{"acKind":"PodManifest","acVersion":"0.8.11"}')
    # the server's own throughput: every client is the one pod here, so the per-pod budget
    # (mds.service.RATE) is lifted; load_isolation.py measures with it
    service = MetadataService(directory, os.urandom(32), PodRateLimit(rate=1e9, burst=10**9))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            (address,) = await nursery.start(serve, service, ["127.0.0.1:0"])
            print(address, flush=True)

    trio.run(main)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Connection:
    """One keep-alive HTTP/1.1 connection; responses parsed by content-length."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def exchange(self, request: bytes) -> int:
        await self.stream.send_all(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        total = end + 4 + length
        while len(self.buffer) < total:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        del self.buffer[:total]
        return status


async def load(port: int, request: bytes, clients: int, seconds: float
               ) -> tuple[int, int, float, list[float]]:
    """(ok responses, errors, elapsed, latencies) of ``clients`` connections for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    connections = [Connection(await trio.open_tcp_stream("127.0.0.1", port))
                   for _ in range(clients)]
    for conn in connections:  # one warm-up request each
        await conn.exchange(request)
    deadline = trio.current_time() + seconds

    async def client(conn: Connection) -> None:
        nonlocal errors
        while trio.current_time() < deadline:
            start = time.perf_counter()
            status = await conn.exchange(request)
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for conn in connections:
            nursery.start_soon(client, conn)
    elapsed = time.perf_counter() - started
    for conn in connections:
        await conn.stream.aclose()
    return len(latencies), errors, elapsed, latencies


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    """The service in its own process (``--serve``); returns it and its port."""
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert server.stdout is not None
        address = server.stdout.readline().decode().strip()  # http://127.0.0.1:PORT
        return server, int(address.rsplit(":", 1)[1])
    except BaseException:
        server.kill()
        server.wait()
        raise


_BODY = b"content=" + b"x" * 64
ENDPOINTS = {
    "GET pod/uuid": (f"GET /{TOKEN}/acMetadata/v1/pod/uuid HTTP/1.1\r\n"
                     "Host: mds\r\n\r\n").encode(),
    "POST pod/hmac/sign": (f"POST /{TOKEN}/acMetadata/v1/pod/hmac/sign HTTP/1.1\r\n"
                           "Host: mds\r\nContent-Type: application/x-www-form-urlencoded"
                           f"\r\nContent-Length: {len(_BODY)}\r\n\r\n").encode() + _BODY,
}
"""The measured requests, by row name."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="per endpoint")
    args = parser.parse_args()
    if args.serve:
        serve_main()
        return
    server, port = start_server()
    try:
        idle_rss = rss_kib(server.pid)
        rows = []
        for name, request in ENDPOINTS.items():
            ok, errors, elapsed, latencies = trio.run(load, port, request, args.clients,
                                                      args.seconds)
            rows.append((name, ok / elapsed, percentile(latencies, 50),
                         percentile(latencies, 99), errors))
        busy_rss = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait()
    print(f"{args.clients} keep-alive clients, {args.seconds:g} s per endpoint; "
          f"server RSS {idle_rss / 1024:.1f} MiB idle, {busy_rss / 1024:.1f} MiB after")
    print(f"{'endpoint':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, rate, p50, p99, errors in rows:
        print(f"{name:<22}{rate:>9.0f}{p50 * 1000:>9.1f}{p99 * 1000:>9.1f}{errors:>8}")


if __name__ == "__main__":
    main()
