"""Benchmark of the /v1/events stream: 100 subscribers on the control socket (loopback).

Measures sustained delivery (every subscriber gets every event) at increasing write rates,
p50/p99 delivery latency (event ``time`` to receipt), the cross-process path (another process
commits at 100 events/s; its commit to receipt), and the supervisor's memory per idle
subscriber. Not a test: prints a table.

    PYTHONPATH=. python bench/events_bench.py [--subscribers 100] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- server side


def serve_main(conf: str) -> None:
    """The supervisor stand-in: hub + server, plus a bench-only route that writes events
    in-process (one transaction each, then ``notify()``), as the supervisor does."""
    from jetpack.config import load_config
    from jetpack.state.db import StateDB
    from jetpack.supervisor.api import Request, core_router
    from jetpack.supervisor.events import EventHub
    from jetpack.supervisor.server import serve

    config = load_config(conf)

    async def main() -> None:
        db_path = config.root / "jetpack.db"
        writer = StateDB(db_path)
        limiter = trio.CapacityLimiter(1)
        async with trio.open_nursery() as nursery:
            hub = await nursery.start(EventHub(db_path).run)
            router = core_router(hub)

            async def emit(request: Request) -> Any:
                body = request.json()
                count, rate = int(body["count"]), float(body["rate"])
                start = trio.current_time()
                for i in range(count):
                    await trio.sleep_until(start + i / rate)

                    def write(i: int = i) -> None:
                        with writer.transaction() as tx:
                            tx.event("app.started", pod="0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a90",
                                     pod_name="bench", app="a", n=i)

                    await trio.to_thread.run_sync(write, limiter=limiter)
                    hub.notify()
                return {"written": count, "seconds": trio.current_time() - start}

            router.add("POST", "/bench/emit", emit)
            await nursery.start(serve, config, hub, router)
            print("ready", flush=True)

    if os.environ.get("EVENTS_BENCH_PROFILE"):
        import cProfile

        cProfile.runctx("trio.run(main)", globals(), locals(),
                        os.environ["EVENTS_BENCH_PROFILE"])
    else:
        trio.run(main)


# --------------------------------------------------------------------------- client side


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Subscriber:
    def __init__(self) -> None:
        self.last_seq = 0
        self.latencies: list[float] = []
        self.received = 0
        self.reconnects = 0
        self.received_at: dict[int, float] = {}


async def subscribe(socket_path: Path, sub: Subscriber, ready: trio.Event,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    import trio_websocket

    first = True
    while True:
        stream = await trio.open_unix_socket(str(socket_path))
        async with stream, trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, "localhost", f"/v1/events?since={sub.last_seq}")
            try:
                while True:
                    text = await ws.get_message()
                    now = time.time()
                    message = json.loads(text)
                    if message["type"] == "heartbeat":
                        if first:
                            first = False
                            task_status.started()
                        continue
                    sent = datetime.fromisoformat(message["time"]).timestamp()
                    sub.latencies.append(now - sent)
                    sub.received += 1
                    sub.last_seq = message["seq"]
                    sub.received_at[message["seq"]] = now
            except trio_websocket.ConnectionClosed:
                sub.reconnects += 1
            nursery.cancel_scope.cancel()


async def all_received(subs: list[Subscriber], count: int) -> None:
    while min(s.received for s in subs) < count:  # noqa: ASYNC110  # counters of other tasks
        await trio.sleep(0.02)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def bench(args: argparse.Namespace) -> list[tuple[str, ...]]:
    import httpx

    workdir = Path(tempfile.mkdtemp(prefix="jpevb", dir="/tmp"))
    root = workdir / "state"
    root.mkdir()
    from jetpack.state.db import StateDB

    StateDB(root / "jetpack.db", create=True).close()
    socket_path = workdir / "j.sock"
    conf = workdir / "jetpack.conf"
    conf.write_text(f"root.path = {root}\nsupervisor.socket = {socket_path}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(  # noqa: ASYNC220  # started once, before any measurement
        [sys.executable, __file__, "--serve", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    rows: list[tuple[str, ...]] = []
    try:
        assert server.stdout is not None
        await trio.to_thread.run_sync(server.stdout.readline)
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        http = httpx.AsyncClient(transport=transport, base_url="http://jetpack", timeout=None)
        await trio.sleep(0.5)
        before = rss_kib(server.pid)
        subs = [Subscriber() for _ in range(args.subscribers)]
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            for sub in subs:
                await nursery.start(subscribe, socket_path, sub, ready)
            await trio.sleep(1.0)
            after = rss_kib(server.pid)
            rows.append(("idle subscribers", f"{args.subscribers}",
                         f"{(after - before) / args.subscribers:.1f} KiB RSS each", "", ""))
            for rate in args.rates:
                for sub in subs:
                    sub.latencies.clear()
                    sub.received = 0
                    sub.reconnects = 0
                count = int(rate * args.seconds)
                started = time.monotonic()
                answer = (await http.post("/bench/emit", json={"count": count,
                                                               "rate": rate})).json()
                with trio.move_on_after(30):
                    await all_received(subs, count)
                elapsed = time.monotonic() - started
                delivered = sum(s.received for s in subs)
                latencies = [x for s in subs for x in s.latencies]
                complete = all(s.received == count for s in subs)
                reconnects = sum(s.reconnects for s in subs)
                rows.append((
                    f"in-process writer {rate:g}/s",
                    f"{count / answer['seconds']:.0f} ev/s written",
                    f"{delivered / elapsed:.0f} msg/s delivered"
                    + ("" if complete else " (INCOMPLETE)"),
                    f"p50 {percentile(latencies, 50) * 1000:.1f} ms / "
                    f"p99 {percentile(latencies, 99) * 1000:.1f} ms",
                    f"{reconnects} slow-consumer reconnects",
                ))
            # Another process appends (as `jetpack import` or `prepare` does), 100 events/s;
            # latency from the writer's commit (it prints seq and commit time) to receipt.
            for sub in subs:
                sub.latencies.clear()
                sub.received = 0
                sub.received_at.clear()
            count = 200
            script = ("import sys,time\nfrom pathlib import Path\n"
                      "from jetpack.state.db import StateDB\n"
                      "db = StateDB(Path(sys.argv[1]))\n"
                      "start = time.monotonic()\n"
                      "for i in range(200):\n"
                      "    time.sleep(max(0.0, start + i / 100 - time.monotonic()))\n"
                      "    with db.transaction() as tx: e = tx.event('image.imported', n=i)\n"
                      "    print(e.seq, time.time())\n")
            writer = await trio.run_process(
                [sys.executable, "-c", script, str(root / "jetpack.db")],
                env=env, capture_stdout=True)
            committed = {int(seq): float(at) for seq, at in
                         (line.split() for line in writer.stdout.decode().splitlines())}
            with trio.move_on_after(10):
                await all_received(subs, count)
            latencies = [at - committed[seq] for s in subs
                         for seq, at in s.received_at.items() if seq in committed]
            rows.append(("other-process writer 100/s", f"{count} events",
                         f"{sum(s.received for s in subs)} msgs",
                         f"p50 {percentile(latencies, 50) * 1000:.1f} ms / "
                         f"p99 {percentile(latencies, 99) * 1000:.1f} ms",
                         "writer commit -> received"))
            nursery.cancel_scope.cancel()
        await http.aclose()
    finally:
        server.send_signal(2)  # SIGINT: lets a profile be written
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="CONF", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 300, 1000, 3000])
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve)
        return
    rows = trio.run(bench, args)
    headers = ("scenario", "load", "throughput", "latency", "notes")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


if __name__ == "__main__":
    main()
