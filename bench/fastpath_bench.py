"""Issue 18's targets in one run: each measurement beside its baseline from the same run, the
ratio, the target and a verdict (meets / misses).

Not a test. Run as root:  PYTHONPATH=. python bench/fastpath_bench.py [-n 10] [--pods 100] [--full]
--full uses the issue's sizes: 500 idle pods, a 150 MiB import, 10 s of events, 5 s per MDS
endpoint. A real ``jetpack daemon`` runs against a temporary state root with its own bridge and
network (supervisor_bench's Host); pods are made with ``jetpack prepare`` and driven through the
control socket's HTTP API and the CLI only, so the same command measures main before and after
the issue's changes. Everything it creates is removed afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import events_bench  # the sibling benchmarks (bench/ is on sys.path above)
import import_bench
import mds_bench
from runtime_bench import floor_once, runc_once
from supervisor_bench import (
    IMAGE,
    REPO,
    Host,
    bench_api_start,
    bench_real_memory,
    make_aci,
    make_rootfs,
)

ENV = dict(os.environ, PYTHONPATH=str(REPO))

# A second process writing events the way `jetpack tag` does (the CLI's own code, in a loop,
# without an interpreter start per event), paced at RATE events/s; prints its elapsed seconds.
WRITER = """\
import sys, time
from jetpack.cli.main import main
conf, image, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
main(["-c", conf, "images"])  # warm: the command modules imported, no event written
start = time.monotonic()
for i in range(count):
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
    if main(["-c", conf, "tag", image, f"example.com/bench@t{i}"]) != 0:
        sys.exit(f"jetpack tag failed at event {i}")
print(time.monotonic() - start, file=sys.stderr)
"""


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    unit: str
    baseline: str = ""  # what the ratio divides by
    ratio: float | None = None
    target: str = ""
    verdict: str = ""


def compare(name: str, value: float, unit: str, baseline: str, base: float, *,
            at_most: float | None = None, at_least: float | None = None) -> Row:
    """A row with ``value / base``, judged against the target ratio when there is one."""
    ratio = value / base
    if at_most is not None:
        return Row(name, value, unit, baseline, ratio, f"<= {at_most:g}x",
                   "meets" if ratio <= at_most else "misses")
    if at_least is not None:
        return Row(name, value, unit, baseline, ratio, f">= {at_least:g}x",
                   "meets" if ratio >= at_least else "misses")
    return Row(name, value, unit, baseline, ratio)


SETTLE = 0.15
"""Seconds between two measured runs: no side is measured while what the one before left in
the background runs (a pod's teardown after wait answered, the fork server's refill)."""


def interleaved(runs: int, *commands: Callable[[], Any]) -> tuple[list[float], ...]:
    """Each command's times: one run of each in turn, after one warm-up round (so that the
    load of the moment weighs on every side of a ratio alike), ``SETTLE`` apart."""
    times: tuple[list[float], ...] = tuple([] for _ in commands)
    for i in range(runs + 1):
        for side, once in enumerate(commands):
            time.sleep(SETTLE)
            began = time.perf_counter()
            once()
            if i:
                times[side].append(time.perf_counter() - began)
    return times


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def helpers_pss_kib(daemon: int, marker: str) -> tuple[int, int]:
    """(Pss of the daemon and of every other process running this interpreter that descends
    from it or names ``marker`` (the state root) in its command line, their count): the
    supervisor and its helpers whatever their layout (reparented monitors too), not the apps."""
    interpreter = os.stat(sys.executable)
    parents: dict[int, int] = {}
    ours: list[int] = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        try:
            parents[pid] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            exe = os.stat(proc / "exe")  # follows the link into any mount namespace
            if (exe.st_dev, exe.st_ino) == (interpreter.st_dev, interpreter.st_ino):
                ours.append(pid)
        except (OSError, IndexError, ValueError):
            continue

    def counted(pid: int) -> bool:
        if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
        while pid > 1:
            if pid == daemon:
                return True
            pid = parents.get(pid, 0)
        return False

    total = count = 0
    for pid in ours:
        try:
            if counted(pid):
                total += pss_kib(pid)
                count += 1
        except OSError:
            continue
    return total, count


def bench_import(mib: int, runs: int = 3) -> tuple[float, float]:
    """MiB/s of uncompressed tar: (the gzip|tee>(sha512sum)|tar pipeline, ``jetpack import``),
    medians of ``runs`` interleaved runs (a single one swung 0.6x-1.2x on a shared machine)."""
    with tempfile.TemporaryDirectory(prefix="jpimpb-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        aci, tar_bytes = import_bench.make_aci(work, mib)
        subprocess.run(["cat", str(aci)], stdout=subprocess.DEVNULL, check=True)  # warm
        pipeline, cli = [], []
        for i in range(runs):
            pipeline.append(import_bench.baseline(aci, work / f"extract{i}"))
            cli.append(import_bench.cli_import(work, aci, f"cli{i}", None))
    mib_s = tar_bytes / 2**20
    return mib_s / statistics.median(pipeline), mib_s / statistics.median(cli)


def bench_mds(seconds: float, clients: int = 50) -> dict[str, float]:
    """req/s of each mds_bench endpoint."""
    server, port = mds_bench.start_server()
    try:
        rates = {}
        for name, request in mds_bench.ENDPOINTS.items():
            ok, _errors, elapsed, _latencies = trio.run(mds_bench.load, port, request, clients,
                                                        seconds)
            rates[name] = ok / elapsed
        return rates
    finally:
        server.terminate()
        server.wait()


async def bench_events(host: Host, last_seq: int, count: int, rate: float, cli_count: int
                       ) -> tuple[list[float], int, float, list[float]]:
    """One websocket subscriber on the control socket; events written by another process:
    (latencies, events received, rate achieved by the writer, latencies of ``jetpack tag``
    commands run one after another)."""
    sub = events_bench.Subscriber()
    sub.last_seq = last_seq  # only what is written from now on
    async with trio.open_nursery() as nursery:
        await nursery.start(events_bench.subscribe, host.socket, sub, trio.Event())
        writer = await trio.run_process(
            [sys.executable, "-c", WRITER, str(host.conf), IMAGE, str(count), str(rate)],
            env=ENV, stdout=subprocess.DEVNULL, capture_stderr=True)
        with trio.move_on_after(15):
            await events_bench.all_received([sub], count)
        written = list(sub.latencies), sub.received
        sub.latencies.clear()
        sub.received = 0
        for i in range(cli_count):
            await trio.to_thread.run_sync(host.jp, "tag", IMAGE, f"example.com/bench-cli@t{i}")
        with trio.move_on_after(15):
            await events_bench.all_received([sub], cli_count)
        nursery.cancel_scope.cancel()
    seconds = float(writer.stderr.decode().split()[-1])
    return written[0], written[1], count / seconds, list(sub.latencies)


def last_event_seq(host: Host) -> int:
    lines = host.jp("events", "--no-follow", "--json").stdout.splitlines()
    return int(json.loads(lines[-1])["seq"]) if lines else 0


def measure(args: argparse.Namespace, work: Path, host: Host) -> list[Row | str]:
    rows: list[Row | str] = []
    n = args.runs
    rootfs = make_rootfs(work / "rootfs")
    aci = make_aci(work, rootfs)
    runc_run = runc_once(rootfs, work / "bundle")
    # the keep rows first, with no supervisor running
    pipeline, cli_import = bench_import(args.import_mib)
    mds = bench_mds(args.mds_seconds)

    host.jp("init")
    host.jp("import", str(aci))
    host.start()
    # runc and the floor run interleaved with our starts (and runc with run --rm), SETTLE
    # apart: a ratio divides two figures taken under the same load of the moment
    response, to_started, to_exited, peers = bench_api_start(
        host, n, {"runc": runc_run, "floor": floor_once(rootfs)}, settle=SETTLE)
    runc, floor = median_ms(peers["runc"]), median_ms(peers["floor"])
    run, runc_beside_run = interleaved(
        n, lambda: host.jp("run", "--rm", IMAGE, "--exec", "/bin/true"), runc_run)
    runc_b = median_ms(runc_beside_run)
    python, listing, status = interleaved(
        n, lambda: subprocess.run([sys.executable, "-c", "import sqlite3, json"], env=ENV,
                                  check=True),
        lambda: host.jp("list"), lambda: host.jp("status"))
    latencies, received, achieved, cli_latencies = trio.run(
        bench_events, host, last_event_seq(host), int(args.event_rate * args.event_seconds),
        args.event_rate, args.cli_events)
    memory = bench_real_memory(host, [args.pods], args.batch)
    assert host.daemon is not None
    tree_pss, tree_count = helpers_pss_kib(host.daemon.pid, str(host.root))
    # the daemon stops every pod on SIGTERM within pod.stop-timeout (3 s) + 30 s, or leaves
    # them running: the time to its exit, and how many it left
    stopping = time.perf_counter()
    host.stop()
    stop_seconds = time.perf_counter() - stopping
    left_running = len(host.live_pods())

    rows.append(f"pod start, /bin/true, network included, median of {n} "
                "(runc and the floor interleaved with our runs)")
    rows.append(compare("runc run", runc, "ms", "runc run", runc))
    rows.append(compare("unshare+chroot (floor)", floor, "ms", "runc run", runc))
    rows.append(compare("API start+wait: request->exited", median_ms(to_exited), "ms",
                        "runc run", runc, at_most=1.0))
    rows.append(compare("API start: request->app.started", median_ms(to_started), "ms",
                        "runc run", runc))
    rows.append(compare("API start: request->response", median_ms(response), "ms",
                        "runc run", runc))
    rows.append(compare("runc run, interleaved with run --rm", runc_b, "ms", "runc run", runc_b))
    rows.append(compare("jetpack run --rm IMAGE --exec /bin/true", median_ms(run), "ms",
                        "runc run", runc_b, at_most=4.0))
    rows.append(f"CLI overhead, median of {n} (the three interleaved)")
    py = median_ms(python)
    rows.append(compare("python -c 'import sqlite3, json'", py, "ms", "python", py))
    rows.append(compare("jetpack list", median_ms(listing), "ms", "python", py, at_most=2.0))
    rows.append(compare("jetpack status", median_ms(status), "ms", "python", py, at_most=2.0))
    (_, idle_rss, _), (pods, rss, seconds) = memory
    scale = "" if pods == 500 else f" x {pods}/500"
    rows.append(f"{pods} idle pods (/bin/sleep 3600) through the API, {args.batch} in flight")
    rows.append(compare("start all", seconds, "s", f"25 s{scale}", 25 * pods / 500, at_most=1.0))
    rows.append(compare("daemon RSS after", rss / 1024, "MiB", "150 MiB", 150, at_most=1.0))
    rows.append(compare("daemon RSS before", idle_rss / 1024, "MiB", "150 MiB", 150))
    rows.append(compare(f"PSS daemon + {tree_count - 1} Python helpers",
                        tree_pss / 1024, "MiB", "150 MiB", 150))
    rows.append(Row(f"stop all (SIGTERM -> exit), {left_running} left running", stop_seconds,
                    "s", "33 s", stop_seconds / 33, "<= 1x",
                    "meets" if stop_seconds <= 33 and not left_running else "misses"))
    count = int(args.event_rate * args.event_seconds)
    rows.append(f"events from another process -> one /v1/events subscriber "
                f"({received}/{count} received, written at {achieved:.0f}/s)")
    p99 = events_bench.percentile(latencies, 99) * 1000
    rows.append(compare("p50", events_bench.percentile(latencies, 50) * 1000, "ms", "20 ms", 20))
    rows.append(Row("p99", p99, "ms", "20 ms", p99 / 20, "<= 1x",
                    "meets" if p99 <= 20 and received == count else "misses"))
    rows.append(compare(f"jetpack tag, {args.cli_events} one after another: p50",
                        events_bench.percentile(cli_latencies, 50) * 1000, "ms", "20 ms", 20))
    rows.append("keep: import (median of 3 each, uncompressed tar MiB/s) and MDS (50 clients)")
    rows.append(compare("gzip|tee>(sha512sum)|tar -x", pipeline, "MiB/s", "pipeline", pipeline))
    rows.append(compare(f"jetpack import, {args.import_mib} MiB", cli_import, "MiB/s",
                        "pipeline", pipeline, at_least=0.8))
    for name, rate in mds.items():
        rows.append(Row(f"MDS {name}", rate, "req/s", target="keep", verdict="vs before"))
    return rows


def render(rows: list[Row | str]) -> str:
    lines = [f"{'measurement':<42}{'value':>8}        {'baseline':<15}{'ratio':>7}  "
             f"{'target':<8}verdict"]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        digits = 0 if row.unit == "req/s" else 1
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(f"  {row.name:<40}{row.value:>8.{digits}f} {row.unit:<5}  "
                     f"{row.baseline:<15}{ratio:>7}  {row.target:<8}{row.verdict}".rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="runs per latency median")
    parser.add_argument("--full", action="store_true", help="the issue's sizes")
    parser.add_argument("--pods", type=int, help="idle pods (default 100; 500 with --full)")
    parser.add_argument("--batch", type=int, default=10, help="start requests in flight")
    parser.add_argument("--event-rate", type=float, default=100.0, help="events/s written")
    parser.add_argument("--event-seconds", type=float, help="default 3 (10 with --full)")
    parser.add_argument("--cli-events", type=int, default=10, help="jetpack tag commands")
    parser.add_argument("--import-mib", type=int, help="default 64 (150 with --full)")
    parser.add_argument("--mds-seconds", type=float, help="default 2 (5 with --full)")
    args = parser.parse_args()
    for name, small, full in (("pods", 100, 500), ("event_seconds", 3.0, 10.0),
                              ("import_mib", 64, 150), ("mds_seconds", 2.0, 5.0)):
        if getattr(args, name) is None:
            setattr(args, name, full if args.full else small)
    # The checkout's modules compiled first, as pip compiles an installed wheel's: with
    # PYTHONDONTWRITEBYTECODE set (as here) a module without its .pyc would be compiled again
    # by every CLI call (jetpack.config alone: ~9 ms).
    compileall.compile_dir(str(REPO / "jetpack"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="jpfpb", dir="/tmp"))
    host = Host(work)
    try:
        rows = measure(args, work, host)
    finally:
        host.teardown()
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows))


if __name__ == "__main__":
    main()
