"""The supervisor end to end: pod start latency through the control API and ``jetpack run --rm``
(each vs ``runc run`` and bare unshare + chroot on the same busybox rootfs), and the daemon's
memory with idle pods.

Not a test. Run as root:  PYTHONPATH=. python bench/supervisor_bench.py [-n 10] [--real-pods 100]
    [--fake-pods 100 500]
A real ``jetpack daemon`` runs against a temporary state root with its own bridge (jpb<random>)
and network (172.30.<random>.1/22); pods are made with ``jetpack prepare``; everything is torn down
afterwards, also on failure.
Memory: real pods (``/bin/sleep 3600`` in real namespaces) up to --real-pods, and, for the larger
counts, a Daemon with the in-process FakeRuntime (no namespaces, supervisor bookkeeping only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import bench_floor, bench_runc  # the sibling benchmark

REPO = Path(__file__).resolve().parent.parent
# The CLI as its console script runs it (what `jetpack` is once installed), not `python -m`,
# which imports runpy and importlib.util first (~6 ms of each call that users never pay); a
# tree from before `program` existed runs `main` as its script did then.
JETPACK = [sys.executable, "-c",
           "import sys; import jetpack.cli.main as m; "
           "m.program() if hasattr(m, 'program') else sys.exit(m.main())"]
IMAGE = "example.com/busybox"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_rootfs(path: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, path / "bin/busybox")
    for applet in ("true", "sh", "sleep"):
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    return path


def make_aci(work: Path, rootfs: Path) -> Path:
    from jetpack.hostinfo import appc_arch, appc_os

    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": IMAGE,
                "labels": [{"name": "version", "value": "1.0.0"},
                           {"name": "os", "value": appc_os()},
                           {"name": "arch", "value": appc_arch()}],
                "app": {"exec": ["/bin/true"], "user": "0", "group": "0"}}
    (work / "manifest").write_text(json.dumps(manifest))
    aci = work / "busybox.aci"
    subprocess.run(["tar", "--numeric-owner", "-czf", str(aci), "-C", str(work), "manifest",
                    "-C", str(rootfs.parent), rootfs.name], check=True)
    return aci


class Host:
    """A temporary state root, its configuration, and a ``jetpack daemon`` process."""

    def __init__(self, work: Path) -> None:
        tag = secrets.token_hex(2)
        self.work = work
        self.bridge = f"jpb{tag}"
        self.network = f"172.30.{random.randrange(0, 256, 4)}.1/22"
        self.root = work / "root"
        self.socket = work / "jp.sock"
        self.conf = work / "jetpack.conf"
        self.conf.write_text(
            f"root.path = {self.root}\nsupervisor.socket = {self.socket}\n"
            f"jail.interface = {self.bridge}\njail.network = {self.network}\n"
            "pod.stop-timeout = 3s\n")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = work / "daemon.log"

    def jp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*JETPACK, "-c", str(self.conf),
                               *args], capture_output=True, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        if check and done.returncode != 0:
            raise SystemExit(f"jetpack {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stderr}")
        return done

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "jetpack.cli.main", "-c", str(self.conf), "daemon"],
                env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the supervisor did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None

    def live_pods(self) -> list[str]:
        """Pods recorded as still running (a supervisor that ran out of time left them)."""
        pods = json.loads(self.jp("list", "--json", check=False).stdout or "[]")
        return [p["uuid"] for p in pods if p["state"] in ("starting", "running", "stopping")]

    def teardown(self) -> None:
        self.stop()
        if (self.root / "jetpack.db").exists():
            # Pods a stop left running are adopted by a new supervisor and stopped again
            # (destroy refuses a running pod without a supervisor): nothing stays behind.
            for _ in range(2):
                if not self.live_pods():
                    break
                print("teardown: pods left running; stopping them again", file=sys.stderr)
                self.socket.unlink(missing_ok=True)  # a killed daemon's; ours is stopped
                self.start()
                self.stop()
            pods = json.loads(self.jp("list", "--json", check=False).stdout or "[]")
            if pods:
                self.jp("destroy", *[p["uuid"] for p in pods], check=False)
            self.jp("gc", "--network", check=False)
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True,
                          check=False).returncode == 0:
            subprocess.run(["ip", "link", "del", self.bridge], check=False)

    def prepare(self, count: int, exec_: str, parallel: int = 4) -> list[str]:
        """``count`` pods prepared by ``jetpack prepare`` (``parallel`` commands at a time)."""
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(
                lambda _: self.jp("prepare", IMAGE, "--exec", exec_).stdout.split()[-1],
                range(count)))

    def destroy(self, pods: list[str]) -> None:
        for i in range(0, len(pods), 100):
            self.jp("destroy", *pods[i:i + 100])


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench_api_start(host: Host, runs: int, peers: dict[str, Callable[[], None]] | None = None,
                    *, settle: float = 0.0,
                    ) -> tuple[list[float], list[float], list[float], dict[str, list[float]]]:
    """(request -> response of POST start, request -> app.started event time, request -> the
    app exited: POST start then GET wait, and each of ``peers``' times). Each of our runs
    follows one run of every peer (runc, the floor), so that the machine's load of the
    moment weighs on both sides of a ratio alike; one warm-up run of each is dropped. Each
    run starts ``settle`` seconds after the one before: neither side is measured while the
    other's leftovers run (our pod's teardown and the fork server's refill, runc's cleanup)."""
    import httpx

    peers = peers or {}
    pods = host.prepare(runs + 1, "/bin/true")
    sent: dict[str, float] = {}
    responses = []
    exited = []
    peer_times: dict[str, list[float]] = {name: [] for name in peers}
    transport = httpx.HTTPTransport(uds=str(host.socket))
    with httpx.Client(transport=transport, base_url="http://jetpack", timeout=60) as http:
        http.get("/v1/ping")
        for pod in pods:
            for name, once in peers.items():
                time.sleep(settle)
                began = time.perf_counter()
                once()
                peer_times[name].append(time.perf_counter() - began)
            time.sleep(settle)
            sent[pod] = time.time()
            start = time.perf_counter()
            answer = http.post(f"/v1/pods/{pod}/start")
            responses.append(time.perf_counter() - start)
            answer.raise_for_status()
            http.get(f"/v1/pods/{pod}/wait").raise_for_status()
            exited.append(time.perf_counter() - start)
    events = [json.loads(line) for line in
              host.jp("events", "--no-follow", "--json").stdout.splitlines()]
    started = {e["pod"]: datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
               for e in events if e["type"] == "app.started"}
    to_exec = [started[pod] - sent[pod] for pod in pods]
    host.destroy(pods)
    return (responses[1:], to_exec[1:], exited[1:],
            {name: times[1:] for name, times in peer_times.items()})


def timed(runs: int, once: Callable[[], Any]) -> list[float]:
    once()
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        results.append(time.perf_counter() - start)
    return results


def bench_cli_run(host: Host, runs: int) -> tuple[list[float], list[float]]:
    """(``jetpack run --rm IMAGE --exec /bin/true``, ``jetpack list``: the CLI's own floor)."""
    run = timed(runs, lambda: host.jp("run", "--rm", IMAGE, "--exec", "/bin/true"))
    listing = timed(runs, lambda: host.jp("list"))
    return run, listing


async def start_all(socket: Path, pods: list[str], batch: int) -> None:
    import httpx

    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://jetpack",
                                 timeout=120) as http:
        limit = trio.CapacityLimiter(batch)

        async def one(pod: str) -> None:
            async with limit:
                (await http.post(f"/v1/pods/{pod}/start")).raise_for_status()

        async with trio.open_nursery() as nursery:
            for pod in pods:
                nursery.start_soon(one, pod)


def bench_real_memory(host: Host, counts: list[int], batch: int) -> list[tuple[int, int, float]]:
    """(pods, daemon RSS KiB, seconds to start the batch) at each count of sleeping pods."""
    assert host.daemon is not None
    time.sleep(1)
    rows = [(0, rss_kib(host.daemon.pid), 0.0)]
    running: list[str] = []
    for count in counts:
        fresh = host.prepare(count - len(running), "/bin/sleep 3600")
        start = time.perf_counter()
        trio.run(start_all, host.socket, fresh, batch)
        elapsed = time.perf_counter() - start
        running += fresh
        time.sleep(2)
        rows.append((count, rss_kib(host.daemon.pid), elapsed))
    return rows


def bench_fake_memory(work: Path, counts: list[int], batch: int) -> list[tuple[int, int, float]]:
    """The same with a Daemon and FakeRuntime in this process (RSS of this process)."""
    from jetpack.config import load_config
    from jetpack.keys import ensure_keys
    from jetpack.log import configure_logging
    from jetpack.state import StateDB
    from jetpack.store.pods import AppRecord, PodRecord, PodStore, new_uuid
    from jetpack.supervisor.daemon import Daemon
    from jetpack.testing.fake_runtime import FakeRuntime

    configure_logging()  # the in-process daemon's log to stderr, not into the table
    root = work / "fake-root"
    root.mkdir()
    StateDB.for_root(root, create=True).close()
    config = load_config(None, [f"root.path={root}", f"supervisor.socket={work}/fake.sock",
                                "pod.stop-timeout=2s"], environ={})
    ensure_keys(config)

    def prepare(count: int) -> list[str]:
        db = StateDB.for_root(config.root)
        pods = []
        with db.transaction() as tx:
            tx.execute("INSERT OR IGNORE INTO images (id, name, labels, manifest, size, created,"
                       " storage) VALUES ('sha512-1', 'example.com/app', '{}', '{}', 1, 0, '')")
            for _ in range(count):
                pod_uuid = new_uuid()
                pod = PodRecord(uuid=pod_uuid, name=f"idle-{pod_uuid[:13]}", state="prepared",
                                manifest="{}",
                                apps=[AppRecord("app", "sha512-1")])
                PodStore(db).insert(tx, pod)
                pods.append(pod.uuid)
        db.close()
        return pods

    async def main() -> list[tuple[int, int, float]]:
        daemon = Daemon(config, FakeRuntime(), mds_bind=["127.0.0.1:0"])
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            await trio.sleep(1)
            rows = [(0, rss_kib(os.getpid()), 0.0)]
            running = 0
            for count in counts:
                fresh = prepare(count - running)
                start = time.perf_counter()
                await start_all(config.path("supervisor.socket"), fresh, batch)
                elapsed = time.perf_counter() - start
                running = count
                await trio.sleep(1)
                rows.append((count, rss_kib(os.getpid()), elapsed))
            daemon.request_stop()
        return rows

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10)
    parser.add_argument("--real-pods", type=int, nargs="*", default=[100],
                        help="idle real pod counts to measure (empty: none)")
    parser.add_argument("--fake-pods", type=int, nargs="*", default=[100, 500],
                        help="idle pod counts with the in-process FakeRuntime")
    parser.add_argument("--batch", type=int, default=10, help="concurrent start requests")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jpsvb", dir="/tmp"))
    host = Host(work)
    results: dict[str, list[float]] = {}
    real_memory: list[tuple[int, int, float]] = []
    fake_memory: list[tuple[int, int, float]] = []
    try:
        rootfs = make_rootfs(work / "rootfs")
        aci = make_aci(work, rootfs)
        results["unshare+chroot (floor)"] = bench_floor(rootfs, args.runs)
        results["runc run"] = bench_runc(rootfs, work / "bundle", args.runs)
        host.jp("init")
        host.jp("import", str(aci))
        host.start()
        response, to_exec, exited, _ = bench_api_start(host, args.runs)
        results["API start: request->response"] = response
        results["API start: request->app.started"] = to_exec
        results["API start+wait: request->exited"] = exited
        run, listing = bench_cli_run(host, args.runs)
        results["jetpack run --rm (CLI)"] = run
        results["jetpack list (CLI startup)"] = listing
        if args.real_pods:
            real_memory = bench_real_memory(host, args.real_pods, args.batch)
        host.stop()  # stops the real pods before the in-process daemon runs
        fake_memory = bench_fake_memory(work, args.fake_pods, args.batch) \
            if args.fake_pods else []
    finally:
        host.teardown()
        shutil.rmtree(work, ignore_errors=True)

    floor = median_ms(results["unshare+chroot (floor)"])
    runc = median_ms(results["runc run"])
    print(f"pod start latency, /bin/true, median of {args.runs}")
    print(f"{'':<34}{'median ms':>10}{'x floor':>9}{'x runc':>8}")
    for name, times in results.items():
        median = median_ms(times)
        print(f"{name:<34}{median:>10.1f}{median / floor:>9.2f}{median / runc:>8.2f}")
    print()
    print("supervisor memory with idle pods (/bin/sleep 3600)")
    print(f"{'':<34}{'pods':>6}{'RSS MiB':>9}{'KiB/pod':>9}{'start s':>9}")
    for label, rows in (("real daemon, real pods", real_memory),
                        ("in-process Daemon + FakeRuntime", fake_memory)):
        for pods, rss, elapsed in rows:
            per_pod = (rss - rows[0][1]) / pods if pods else 0.0
            print(f"{label:<34}{pods:>6}{rss / 1024:>9.1f}{per_pod:>9.1f}{elapsed:>9.1f}")


if __name__ == "__main__":
    main()
