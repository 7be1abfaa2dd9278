"""A real jetpack host for end-to-end tests: a state root, a private bridge and network, a
busybox image, and a supervisor process; the ``host`` fixture (conftest.py) tears it all down and
asserts that no mount is left behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from acis import aci_from_dir, aci_from_entries, dir_entry, file_entry, manifest, manifest_entry
from conftest import Jetpack, write_conf


@dataclass
class Host:
    jp: Jetpack
    tmp: Path
    bridge: str
    network: str
    log: Path
    daemon: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start the supervisor; ``env``: variables added to its environment."""
        with self.log.open("ab") as log:
            self.daemon = subprocess.Popen(self.jp.argv("daemon"),
                                           env={**self.jp.env(), **(env or {})},
                                           cwd=self.jp.cwd, stdout=log, stderr=subprocess.STDOUT)
        sock = self.tmp / "jp.sock"
        deadline = time.monotonic() + 30
        # Serving means accepting: after a kill -9 the old socket file is still there.
        while not accepts(sock):
            assert self.daemon.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the supervisor did not start"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(timeout=60)
        self.daemon = None
        return code

    def pod(self, ref: str) -> dict[str, object]:
        (found,) = [p for p in json.loads(self.jp("list", "--json").stdout)
                    if ref in (p["uuid"], p["name"])]
        return found

    def wait_for(self, what: str, check: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def events(self, pod: str | None = None) -> list[dict[str, object]]:
        args = ["events", "--no-follow", "--json"] + (["--pod", pod] if pod else [])
        return [json.loads(line) for line in self.jp(*args).stdout.splitlines()]


def accepts(path: Path) -> bool:
    """True when a server accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def busybox_image(tmp: Path, rootfs: Path, name: str, app: dict[str, object] | None = None,
                  **extra: object) -> Path:
    data = manifest(name, **({"app": app} if app else {}), **extra)
    return aci_from_dir(tmp, rootfs, data, tmp / f"{name.replace('/', '_')}.aci")


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings of the storage driver the host uses: dir, or (parametrized) zfs on a fresh
    dataset of the test pool."""
    if getattr(request, "param", "dir") == "zfs":
        dataset = request.getfixturevalue("zfs_dataset")
        return {"storage.driver": "zfs", "root.zfs": dataset}
    return {"storage.driver": "dir"}


RESERVATIONS = Path("/run/jetpack-test-networks")


def _free_network() -> tuple[str, str, IO[bytes]]:
    """A bridge name and a 172.31.X.1/24 that no interface, address or route on the machine
    uses, reserved (an flock held until the returned file is closed) against every other host
    opened at the same time, by any checkout: the bridge is made only at the first pod start,
    so an address check alone lets two hosts pick the same /24 and their routes collide."""
    RESERVATIONS.mkdir(exist_ok=True)
    for _ in range(512):
        tag = secrets.token_hex(3)
        third = secrets.randbelow(250)  # 250..255 stay free for tests that name their own
        bridge, net = f"jpt{tag}", f"172.31.{third}"
        lock = (RESERVATIONS / f"{third}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if _in_use(net, bridge):
            lock.close()
            continue
        os.set_inheritable(lock.fileno(), False)
        return bridge, f"{net}.1/24", lock
    raise AssertionError("no free 172.31.X.0/24 for a test host")


def _in_use(net: str, bridge: str) -> bool:
    """Whether an address, route or interface on the machine already uses ``net``.0/24 or
    ``bridge`` (hosts of older checkouts reserve nothing: their bridge says it)."""
    seen = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                          check=True).stdout
    seen += subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                           text=True, check=True).stdout
    return bool(re.search(rf"(^|[\s:]){re.escape(net)}\.\d+(/|\s)", seen, re.M)
                or re.search(rf"(^|\s){re.escape(bridge)}(:|\s|$)", seen, re.M))


@pytest.fixture
def host(root: None, busybox_rootfs: Path, tmp_path: Path, storage: dict[str, str]
         ) -> Iterator[Host]:
    with open_host(tmp_path, busybox_rootfs, storage) as h:
        yield h


@contextlib.contextmanager
def open_host(tmp_path: Path, busybox_rootfs: Path, storage: dict[str, str],
              command: tuple[str, ...] = (), cwd: Path | None = None) -> Iterator[Host]:
    """A host driven by the checkout's jetpack, or by ``command`` (an installed jetpack)."""
    bridge, network, reservation = _free_network()
    conf = write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(tmp_path / "root"), "supervisor.socket": str(tmp_path / "jp.sock"),
        "jail.interface": bridge, "jail.network": network, "pod.stop-timeout": "3s",
        "restart.delay": "100ms", "restart.reset-after": "5s", **storage})
    jp = Jetpack(conf, tmp_path / "root", command, cwd)
    jp("init")
    jp("import", str(busybox_image(tmp_path, busybox_rootfs, "example.com/busybox",
                                   {"exec": ["/bin/sh"], "user": "0", "group": "0"})))
    h = Host(jp, tmp_path, bridge, network, tmp_path / "daemon.log")
    try:
        yield h
    finally:
        if h.daemon is not None:
            h.stop()
        for pod in json.loads(jp("list", "--json").stdout):
            jp("destroy", pod["uuid"], check=False)
        jp("gc", "--network", check=False)
        leftover = subprocess.run(["ip", "link", "show", bridge], capture_output=True)
        if leftover.returncode == 0:
            subprocess.run(["ip", "link", "del", bridge], check=False)
        with Path("/proc/self/mountinfo").open() as mountinfo:
            # the state root's own datasets stay mounted until zfs_dataset destroys them;
            # nothing else (no pod clone, namespace file, overlay or volume) may remain
            left = [line for line in mountinfo if str(tmp_path) in line
                    and not (" fuse.zfs " in line and "/pods/" not in line)]
            assert left == [], f"mounts left behind: {left}"
        reservation.close()  # the bridge is gone: another host may take the /24


def run_sh(host: Host, script: str, *extra: str, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    return host.jp("run", "--rm", "example.com/busybox", "--exec", f"/bin/sh -c '{script}'",
                   *extra, check=check)


def import_web_image(host: Host) -> None:
    """``example.com/web``: busybox httpd on port 8080 (the port named ``http``) serving
    "hello from the pod"."""
    page = aci_from_entries(host.tmp / "web.aci", [
        manifest_entry(manifest("example.com/web", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/usr/sbin/httpd", "-f", "-p", "8080", "-h", "/www"],
                "user": "0", "group": "0",
                "ports": [{"name": "http", "protocol": "tcp", "port": 8080}]})),
        dir_entry("rootfs"), dir_entry("rootfs/www"),
        file_entry("rootfs/www/index.html", b"hello from the pod\n")])
    host.jp("import", str(page))


def http_get(url: str, timeout: float = 30) -> bytes:
    """The body at ``url``, asked again until something answers or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
            return body
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers at {url}"
            time.sleep(0.1)
