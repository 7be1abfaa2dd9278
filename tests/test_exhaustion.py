"""Resource exhaustion with real parts: the supervisor out of file descriptors, the disk under
its logs and event log full, a pod at its pids limit. Each time the supervisor keeps running,
what already runs is unaffected, and service returns once the resource does."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import inventory

from podhost import Host, accepts

NOFILE = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_with_nofile(host: Host, limit: int) -> None:
    """``host.start()`` with the daemon's RLIMIT_NOFILE at ``limit`` (prlimit execs it, so the
    pid is the daemon's)."""
    with host.log.open("ab") as log:
        host.daemon = subprocess.Popen(
            ["prlimit", f"--nofile={limit}:{limit}", "--", *host.jp.argv("daemon")],
            env=host.jp.env(), cwd=host.jp.cwd, stdout=log, stderr=subprocess.STDOUT)
    host.wait_for("the supervisor", lambda: accepts(host.tmp / "jp.sock"))


@contextlib.contextmanager
def flood(host: Host, pid: int) -> Iterator[list[socket.socket]]:
    """Connections to the control socket and the metadata service until the daemon holds
    every descriptor it may, plus a backlog it cannot accept; all closed on exit."""
    held: list[socket.socket] = []
    gateway = host.network.split("/")[0]
    try:
        for i in range(3 * NOFILE):
            if i % 2:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(str(host.tmp / "jp.sock"))
            else:
                conn = socket.create_connection((gateway, 1104), timeout=10)
            held.append(conn)
        host.wait_for("the fd limit", lambda: fd_count(pid) >= NOFILE - 2, timeout=60)
        yield held
    finally:
        for conn in held:
            conn.close()


def test_fd_limit_accept_loops_back_off_and_recover(host: Host) -> None:
    start_with_nofile(host, NOFILE)
    assert host.daemon is not None
    pid = host.daemon.pid
    busy = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 600"
                   ).stdout.split()[-1]
    host.jp("start", busy)
    (app_pid,) = [p["pid"] for p in json.loads(host.jp("ps", busy, "--json").stdout)
                  if "sleep 600" in p["command"]]
    with flood(host, pid):
        # at the limit, with connections waiting in both backlogs: no busy loop
        time.sleep(1)
        before = cpu_seconds(pid)
        time.sleep(4)
        spent = cpu_seconds(pid) - before
        assert spent < 0.8, f"the supervisor spun: {spent:.2f} s of CPU in 4 s at the fd limit"
        assert host.daemon.poll() is None
        os.kill(app_pid, 0)  # the running pod is untouched
        assert host.pod(busy)["state"] == "running"
    # descriptors back: the control API and the pod are served again
    host.wait_for("the control API", lambda: host.jp("status", check=False).returncode == 0,
                  timeout=60)
    # the backlogs' closed connections are accepted, read to EOF and released in turn
    host.wait_for("the flood's descriptors released", lambda: fd_count(pid) < NOFILE // 2,
                  timeout=60)
    out = host.jp("exec", busy, "--", "/bin/echo", "still here")
    assert out.stdout == "still here\n"
    run = host.jp("run", "--rm", "example.com/busybox", "--exec", "/bin/echo fresh")
    assert "fresh" in run.stdout
    host.jp("stop", busy)
    assert host.pod(busy)["state"] == "exited"
    assert fd_count(pid) < NOFILE - 10  # nothing of the flood is still held


def test_pids_limit_reached_only_that_pod_fails_to_fork(host: Host) -> None:
    host.start()
    neighbour = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 600"
                        ).stdout.split()[-1]
    host.jp("start", neighbour)
    # busybox sh exits when a fork fails, so the bomb runs in a subshell and the app then
    # execs (no fork) into a sleep: the pod stays up at its limit, its pids all held
    bomb = host.jp("prepare", "example.com/busybox", "--exec",
                   "/bin/sh -c '(while true; do sleep 600 & done); exec sleep 600'"
                   ).stdout.split()[-1]
    host.jp("start", bomb)
    pids = Path("/sys/fs/cgroup/pids/jetpack") / bomb
    limit = int((pids / "pids.max").read_text())
    host.wait_for("the bomb at its limit", lambda: int(
        (pids / "pids.events").read_text().split()[1]) > 0, timeout=120)
    # at the limit: a bomb's process that exits frees a slot its next fork takes again
    assert limit - 8 <= int((pids / "pids.current").read_text()) <= limit
    # the bomb's shell is told: its log says it cannot fork
    host.wait_for("the bomb's complaint",
                  lambda: "fork" in host.jp("logs", bomb).stdout.lower(), timeout=60)
    # the neighbour forks freely, the supervisor starts new pods, the host forks
    out = host.jp("exec", neighbour, "--", "/bin/sh", "-c", "for i in 1 2 3; do (true); done;"
                  " echo forked")
    assert out.stdout == "forked\n"
    assert "alive" in host.jp("run", "--rm", "example.com/busybox", "--exec",
                              "/bin/sh -c 'sleep 0 & wait; echo alive'").stdout
    neighbour_pids = Path("/sys/fs/cgroup/pids/jetpack") / neighbour
    assert (neighbour_pids / "pids.events").read_text().split()[1] == "0"
    assert subprocess.run(["true"]).returncode == 0
    host.jp("stop", bomb)
    assert not pids.exists()
    assert host.pod(neighbour)["state"] == "running"
    host.jp("stop", neighbour)


@contextlib.contextmanager
def small_root(host: Host, size: str = "48m") -> Iterator[Path]:
    """The host's state root moved onto a tmpfs of ``size`` (moved back and unmounted after:
    the host fixture's teardown then finds it where it was)."""
    root = host.jp.root
    aside = host.tmp / "root-aside"
    subprocess.run(["cp", "-a", str(root), str(aside)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "jpfull", str(root)],
                   check=True)
    try:
        subprocess.run(["cp", "-a", f"{aside}/.", str(root)], check=True)
        subprocess.run(["rm", "-rf", str(aside)], check=True)
        yield root
    finally:
        (root / "filler").unlink(missing_ok=True)
        for pod in json.loads(host.jp("list", "--json").stdout):
            host.jp("destroy", pod["uuid"], check=False)
        if host.daemon is not None:
            host.stop()
        subprocess.run(["cp", "-a", str(root), str(aside)], check=True)
        subprocess.run(["umount", str(root)], check=True)
        subprocess.run(["cp", "-a", f"{aside}/.", str(root)], check=True)
        subprocess.run(["rm", "-rf", str(aside)], check=True)


def problems(inv: inventory.Inventory, root: Path) -> list[str]:
    """inventory.problems, less the tmpfs this module mounts on the state root itself."""
    return [p for p in inventory.problems(inv) if p != f"mount {root} of a pod that is not running"]


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem under it has no space left."""
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M"], capture_output=True)
    assert os.statvfs(path.parent).f_bavail == 0


def test_disk_full_under_logs_and_events(host: Host) -> None:
    with small_root(host) as root:
        host.start()
        chatty = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sh -c 'i=0; "
                         "while true; do echo line $i; i=$((i+1)); sleep 0.01; done'"
                         ).stdout.split()[-1]
        quiet = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 600"
                        ).stdout.split()[-1]
        host.jp("start", chatty)
        host.jp("start", quiet)
        host.wait_for("output", lambda: "line 5" in host.jp("logs", chatty).stdout)
        fill(root / "filler")
        # the chatty app writes into a full disk: tmpfs refuses a write only once the log's
        # (or its times index's) last page is full, so the refusal is waited for, not assumed
        (log,) = (root / "pods" / chatty / "logs").glob("*.log")

        def writes_refused() -> bool:
            before = log.stat().st_size
            time.sleep(1)  # the app writes every 10 ms: a second without growth is a refusal
            return log.stat().st_size == before

        host.wait_for("the app's output refused by the full disk", writes_refused, timeout=60)
        # a state change the database cannot record fails plainly, and changes nothing
        stop = host.jp("stop", quiet, check=False)
        assert stop.returncode == 1
        assert "disk is full" in stop.stderr, stop.stderr
        assert "internal error" not in stop.stderr
        assert host.daemon is not None
        assert host.daemon.poll() is None
        assert host.pod(quiet)["state"] == "running"
        assert host.pod(chatty)["state"] == "running"
        inv = inventory.take(host)
        assert problems(inv, root) == []
        assert len(inv.links) == 2
        # space returns: the app's output flows again, after a line saying what was lost
        (root / "filler").unlink()
        host.wait_for("the loss reported in the log",
                      lambda: "bytes of output lost: no space left on device"
                      in host.jp("logs", chatty).stdout, timeout=30)
        log = host.jp("logs", chatty).stdout
        after = log.split("bytes of output lost")[1]
        host.wait_for("output after the gap", lambda: len(host.jp("logs", chatty).stdout
                                                          .split("bytes of output lost")[1]
                                                          .splitlines()) > 5)
        del after
        host.jp("stop", quiet)
        assert host.pod(quiet)["state"] == "exited"
        # the refused write is an event, with what it lost; the log has no gap
        events = host.events()
        (failed,) = [e for e in events if e["type"] == "state.write-failed"]
        assert "full" in str(failed["error"])
        assert f"pod.stopping {quiet}" in failed["lost_events"]  # type: ignore[operator]
        seqs = [int(str(e["seq"])) for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert host.daemon.poll() is None
        host.jp("stop", chatty)
        assert problems(inventory.take(host), root) == []


def test_attack_app_forks_at_once_to_run_outside_its_pods_limits(host: Host) -> None:
    """The monitor joins the pod's cgroups in a thread while it builds the rootfs: the app
    and a child it forks at its very first instruction must still be in every one of them
    (pids, memory, devices), never in the supervisor's, whose limits are none."""
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--exec",
                  "/bin/sh -c 'cat /proc/self/cgroup & wait; cat /proc/self/cgroup'"
                  ).stdout.split()[-1]
    out = host.jp("run", pod)
    lines = out.stdout.splitlines()
    for controller in ("pids", "memory", "devices"):
        found = [line for line in lines if line.split(":")[1] == controller]
        # the first child's lines, then the shell's own: both in the pod's cgroup
        assert len(found) == 2, out.stdout
        assert all(line.endswith(f":/jetpack/{pod}") for line in found), out.stdout
