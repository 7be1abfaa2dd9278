"""The metadata service under load: 50 concurrent keep-alive clients on loopback, requests per
second and p50/p99 latency for GET pod/uuid and POST pod/hmac/sign.

Not a test. Run:  PYTHONPATH=. python bench/mds_bench.py [--clients 50] [--seconds 10]
The server runs in its own process (as in the supervisor: one trio loop), the clients in this
one, so both get a core on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import trio

SIGNING_KEY = bytes(range(32))
TOKEN_KEY = bytes(range(32, 64))


def serve(port_file: str) -> None:
    from jetpack.mds.identity import pod_token
    from jetpack.mds.service import AppMetadata, MetadataService, PodMetadata, StaticDirectory
    from jetpack.mds.service import serve as mds_serve

    pod_uuid = str(uuid.UUID(int=1))
    directory = StaticDirectory()
    directory.by_address["127.0.0.1"] = PodMetadata(
        uuid=pod_uuid, token=pod_token(TOKEN_KEY, pod_uuid), manifest="{}",
        apps={"app": AppMetadata("sha512-" + "a" * 128, "{}")})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: mds_serve(
                MetadataService(directory, SIGNING_KEY), ["127.0.0.1:0"],
                task_status=task_status))
            await trio.Path(port_file).write_text(bound[0].rsplit(":", 1)[1])

    trio.run(main)


async def load(base: str, clients: int, seconds: float, post: bool) -> list[float]:
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while trio.current_time() < deadline:
                started = time.perf_counter()
                if post:
                    r = await http.post(f"{base}/pod/hmac/sign", data={"content": "hello"})
                else:
                    r = await http.get(f"{base}/pod/uuid")
                latencies.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from jetpack.mds.identity import pod_token

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            token = pod_token(TOKEN_KEY, str(uuid.UUID(int=1)))
            base = f"http://127.0.0.1:{port_file.read_text()}/{token}/acMetadata/v1"
            rows = []
            for label, post in (("GET pod/uuid", False), ("POST pod/hmac/sign", True)):
                latencies = trio.run(load, base, args.clients, args.seconds, post)
                latencies.sort()
                rows.append({
                    "request": label, "clients": args.clients, "requests": len(latencies),
                    "rps": round(len(latencies) / args.seconds),
                    "p50_ms": round(statistics.median(latencies) * 1000, 2),
                    "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)})
        finally:
            server.terminate()
            server.wait()
    print(f"{'request':<22}{'clients':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for row in rows:
        print(f"{row['request']:<22}{row['clients']:>8}{row['rps']:>8}{row['p50_ms']:>9}"
              f"{row['p99_ms']:>9}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
