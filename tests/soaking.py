"""Pod cycles of every kind against one real host, and the checks that say whether they leaked.

``Soak(host)`` imports the images the cycles use; ``run(cycles, every)`` runs them in turn
(restart policy firing, port forward with exec and logs, empty and host volumes with exec,
memory and cpu isolators), keeps one ``/v1/events`` follower connected the whole time that checks
the sequence numbers are gap-free, and takes an inventory (tests/inventory.py) before the first
cycle and every ``every`` cycles. ``leaks()`` judges the rows. bench/soak.py and tests/test_soak.py
share it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import inventory
import trio

from acis import aci_from_entries, dir_entry, file_entry, manifest, manifest_entry
from podhost import Host

IMAGE = "example.com/busybox"
# fds the supervisor may hold more at the end than after the first block of cycles, and RSS it
# may grow by, before the growth counts as a leak: the 1000-cycle run saw the fd count move
# between 23 and 27 from row to row (connections and worker threads' files in flight when it is
# read) and RSS move both ways by ~6 MiB (allocator); a leak per cycle exceeds both within a block
FD_SLACK = 5
RSS_SLACK_KIB = 8 * 1024


@dataclass
class Row:
    cycle: int
    seconds: float
    counts: dict[str, int | None]
    problems: list[str]


@dataclass
class Follower:
    """One events websocket connected for the whole run; every seq must follow the last."""

    socket: Path
    last_seq: int = 0
    received: int = 0
    gaps: list[str] = field(default_factory=list)
    disconnects: int = 0
    _token: trio.lowlevel.TrioToken | None = None
    _scope: trio.CancelScope | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self, since: int) -> None:
        self.last_seq = since
        self._thread = threading.Thread(target=trio.run, args=(self._follow,), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the events follower did not connect")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(30)

    async def _follow(self) -> None:
        import trio_websocket

        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            stream = await trio.open_unix_socket(str(self.socket))
            async with stream, trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, "localhost", f"/v1/events?since={self.last_seq}")
                self._ready.set()
                try:
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] == "heartbeat":
                            continue
                        if message["seq"] != self.last_seq + 1:
                            self.gaps.append(f"seq {message['seq']} after {self.last_seq}")
                        self.last_seq = message["seq"]
                        self.received += 1
                except trio_websocket.ConnectionClosed:
                    self.disconnects += 1
                nursery.cancel_scope.cancel()


class Soak:
    def __init__(self, host: Host, log: Callable[[str], None] = print) -> None:
        self.host = host
        self.log = log
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.source = host.tmp / "soak-host-volume"
        self.source.mkdir(exist_ok=True)
        (self.source / "hello").write_text("from the host\n")
        web = aci_from_entries(host.tmp / "soak-web.aci", [
            manifest_entry(manifest("example.com/soak-web", dependencies=[
                {"imageName": IMAGE}], app={
                    "exec": ["/usr/sbin/httpd", "-f", "-p", "8080", "-h", "/www"],
                    "user": "0", "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 8080}]})),
            dir_entry("rootfs"), dir_entry("rootfs/www"),
            file_entry("rootfs/www/index.html", b"soak page\n")])
        limited = aci_from_entries(host.tmp / "soak-limited.aci", [
            manifest_entry(manifest("example.com/soak-limited", dependencies=[
                {"imageName": IMAGE}], app={
                    "exec": ["/bin/sh", "-c", "echo limited"], "user": "0", "group": "0",
                    "isolators": [{"name": "resource/memory", "value": {"limit": "64M"}},
                                  {"name": "resource/cpu", "value": {"limit": "500m"}}]})),
            dir_entry("rootfs")])
        host.jp("import", str(web))
        host.jp("import", str(limited))
        self.kinds: list[tuple[str, Callable[[], None]]] = [
            ("restart", self.restart_cycle), ("port", self.port_cycle),
            ("volumes", self.volume_cycle), ("isolators", self.isolator_cycle)]

    # ------------------------------------------------------------------ the cycles

    def prepare(self, *args: str) -> str:
        return self.host.jp("prepare", *args).stdout.split()[-1]

    def restart_cycle(self) -> None:
        """on-failure:2 fires twice on an app that exits 3; logs hold the three attempts."""
        pod = self.prepare(IMAGE, "--restart", "on-failure:2",
                           "--exec", "/bin/sh -c 'echo attempt; exit 3'")
        out = self.host.jp("run", pod, check=False)
        assert out.returncode == 3, (out.returncode, out.stderr)
        assert out.stdout.count("attempt") == 3, out.stdout
        assert self.host.jp("logs", pod).stdout.count("attempt") == 3
        self.host.jp("destroy", pod)

    def port_cycle(self) -> None:
        """A port forward served from the pod, exec into it, its logs, destroy while running."""
        port = 20000 + secrets.randbelow(20000)
        pod = self.prepare("example.com/soak-web", "-p", f"http:{port}")
        self.host.jp("start", pod)
        deadline = time.monotonic() + 30
        errors: list[str] = []  # the socket errors, each change of error once, in order
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    assert answer.read() == b"soak page\n"
                break
            except OSError as err:
                seen = f"{type(getattr(err, 'reason', err)).__name__}: {err}"
                if not errors or errors[-1] != seen:
                    errors.append(seen)
                if time.monotonic() > deadline:
                    state = self.host.pod(pod)["state"]
                    raise AssertionError(
                        f"the forwarded port {port} never answered (pod {state}): "
                        f"{' / then '.join(errors)}") from err
                time.sleep(0.1)
        out = self.host.jp("exec", pod, "--", "/bin/cat", "/www/index.html")
        assert out.stdout == "soak page\n", out.stdout
        self.host.jp("logs", pod)
        self.host.jp("destroy", pod)

    def volume_cycle(self) -> None:
        """An empty volume written by the app and read by exec, a read-only host volume."""
        pod = self.prepare(
            IMAGE, "-m", "scratch:/scratch", "-m", "outside:/outside", "--exec",
            "/bin/sh -c 'echo vol > /scratch/f; cat /outside/hello; sleep 600'",
            "-v", "scratch,kind=empty", "-v",
            f"outside,kind=host,source={self.source},readOnly=true")
        self.host.jp("start", pod)
        self.host.wait_for("the app's output",
                           lambda: "from the host" in self.host.jp("logs", pod).stdout)
        assert self.host.jp("exec", pod, "--", "/bin/cat", "/scratch/f").stdout == "vol\n"
        self.host.jp("stop", pod)
        self.host.jp("destroy", pod)

    def isolator_cycle(self) -> None:
        out = self.host.jp("run", "--rm", "example.com/soak-limited")
        assert out.stdout.strip() == "limited", out.stdout

    # ------------------------------------------------------------------ the run

    def checkpoint(self, cycle: int, started: float) -> Row:
        inv = inventory.take(self.host)
        row = Row(cycle, time.monotonic() - started, inv.summary(), inventory.problems(inv))
        self.rows.append(row)
        c = row.counts
        self.log(f"{cycle:>6} {row.seconds:>8.0f} {c['pods']:>5} {c['mounts']:>6} "
                 f"{c['links']:>5} {c['rules']:>5} {c['cgroups']:>7} {c['processes']:>5} "
                 f"{c['fds']:>5} {c['rss_kib']:>8} {len(row.problems):>8}")
        for problem in row.problems:
            self.log(f"       problem: {problem}")
        return row

    def run(self, cycles: int, every: int = 100) -> Follower:
        last = max((int(str(e["seq"])) for e in self.host.events()), default=0)
        assert self.host.daemon is not None
        follower = Follower(self.host.tmp / "jp.sock")
        follower.start(last)
        self.log(f"{'cycle':>6} {'seconds':>8} {'pods':>5} {'mounts':>6} {'links':>5} "
                 f"{'rules':>5} {'cgroups':>7} {'procs':>5} {'fds':>5} {'rss_kib':>8} "
                 f"{'problems':>8}")
        started = time.monotonic()
        try:
            self.checkpoint(0, started)
            for cycle in range(1, cycles + 1):
                kind, once = self.kinds[(cycle - 1) % len(self.kinds)]
                try:
                    once()
                except (AssertionError, subprocess.TimeoutExpired) as err:
                    self.failures.append(f"cycle {cycle} ({kind}): {str(err)[:600]}")
                    self.log(f"       failed: {self.failures[-1]}")
                    for pod in json.loads(self.host.jp("list", "--json").stdout):
                        self.host.jp("destroy", pod["uuid"], check=False)
                if cycle % every == 0 or cycle == cycles:
                    self.checkpoint(cycle, started)
            # the follower has seen every event written, in order
            final = max((int(str(e["seq"])) for e in self.host.events()), default=0)
            deadline = time.monotonic() + 30
            while follower.last_seq < final and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            follower.stop()
        if follower.last_seq < final:
            follower.gaps.append(f"the follower stopped at seq {follower.last_seq} of {final}")
        return follower

    def leaks(self, follower: Follower) -> list[str]:
        """Everything that went wrong: failed cycles, problems, growth, events missed."""
        found = list(self.failures)
        for row in self.rows:
            found += [f"cycle {row.cycle}: {p}" for p in row.problems]
            held = {k: v for k, v in row.counts.items()
                    if k in ("pods", "mounts", "links", "rules", "cgroups", "processes") and v}
            if held:
                found.append(f"cycle {row.cycle}: still held with no pod cycling: {held}")
        # growth from the end of the first block (caches warm) to the end
        first, end = self.rows[min(1, len(self.rows) - 1)], self.rows[-1]
        fds0, fds1 = first.counts["fds"], end.counts["fds"]
        if fds0 is None or fds1 is None:
            found.append("the supervisor is not running")
        elif fds1 > fds0 + FD_SLACK:
            found.append(f"supervisor fds grew from {fds0} to {fds1}")
        rss0, rss1 = first.counts["rss_kib"], end.counts["rss_kib"]
        if rss0 is not None and rss1 is not None and rss1 > rss0 + RSS_SLACK_KIB:
            found.append(f"supervisor RSS grew from {rss0} KiB to {rss1} KiB")
        found += [f"events follower: {gap}" for gap in follower.gaps]
        if follower.disconnects:
            found.append(f"events follower disconnected {follower.disconnects} time(s)")
        return found
