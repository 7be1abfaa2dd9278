"""End to end on Linux with the real runtime: a supervisor process, busybox pods in real
namespaces on a real bridge, the metadata service, restart policies with real processes,
kill -9 and adoption, SIGTERM, and nothing left behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import inventory
import pytest

from acis import aci_from_entries, dir_entry, manifest, manifest_entry
from conftest import REPO
from podhost import Host, import_web_image, run_sh


def test_run_prints_output_and_returns_status(host: Host) -> None:
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--name", "envtest", "--user", "user",
                  "--group", "users", "-w", "/tmp", "-e", "GREETING=hi", "--exec",
                  "/bin/sh -c 'id; pwd; env; hostname; exit 3'").stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 3, out.stderr
    assert "uid=1000(user) gid=100(users)" in out.stdout
    assert "\n/tmp\n" in out.stdout
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in out.stdout
    assert "AC_APP_NAME=busybox" in out.stdout
    assert "GREETING=hi" in out.stdout
    assert "\nenvtest\n" in out.stdout  # hostname = pod name
    assert host.pod("envtest")["apps"][0]["exit_status"] == 3  # type: ignore[index]
    manifest = json.loads(host.jp("manifest", "envtest").stdout)
    assert manifest["acKind"] == "PodManifest"
    assert manifest["apps"][0]["app"]["environment"] == [{"name": "GREETING", "value": "hi"}]
    types = [e["type"] for e in host.events(pod)]
    assert types == ["pod.prepared", "pod.starting", "app.started", "pod.started",
                     "app.exited", "pod.exited"]
    assert host.events(pod)[4]["exit_status"] == 3


def test_metadata_service_from_inside_pods(host: Host) -> None:
    host.start()
    script = ('wget -qO- "$AC_METADATA_URL/acMetadata/v1/pod/uuid"; echo; '
              'wget -qO- "$AC_METADATA_URL/acMetadata/v1/apps/$AC_APP_NAME/image/id"; echo; '
              'wget -qO- --post-data content=hello "$AC_METADATA_URL/acMetadata/v1/pod/hmac/sign";'
              ' echo; echo "$AC_METADATA_URL"')
    pod = host.jp("prepare", "example.com/busybox", "--exec", f"/bin/sh -c '{script}'"
                  ).stdout.split()[-1]
    out = host.jp("run", pod)
    uuid, image_id, signature, a_url = out.stdout.splitlines()[:4]
    assert uuid == pod
    assert image_id.startswith("sha512-")
    # verify A's signature from pod B: 200 (wget exits 0), a tampered one: 403 (exit 1)
    verify = ('wget -qO- --post-data "content=hello&uuid={u}&signature={s}" '
              '"$AC_METADATA_URL/acMetadata/v1/pod/hmac/verify"')
    import urllib.parse

    good = verify.format(u=pod, s=urllib.parse.quote(signature, safe=""))
    tampered = ("B" if signature[0] == "A" else "A") + signature[1:]
    bad = verify.format(u=pod, s=urllib.parse.quote(tampered, safe=""))
    assert run_sh(host, good).returncode == 0
    assert run_sh(host, bad, check=False).returncode == 1
    # pod B using A's token (A's whole URL) gets 403: the token must match the source
    stolen = f'wget -qO- "{a_url}/acMetadata/v1/pod/uuid"'
    assert run_sh(host, stolen, check=False).returncode == 1
    # a pod without its own token gets 403; the host (no pod address) gets 403 too
    steal = f'wget -qO- "http://{host.network.split("/")[0]}:1104/x/acMetadata/v1/pod/uuid"'
    assert run_sh(host, steal, check=False).returncode == 1
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{host.network.split('/')[0]}:1104/x/acMetadata/v1/pod/uuid",
                               timeout=10)
    assert info.value.code == 403
    info.value.close()


def test_pods_reach_each_other_and_the_host(host: Host) -> None:
    host.start()
    server = host.jp("prepare", "example.com/busybox", "--name", "server", "--exec",
                     "/bin/sleep 60").stdout.split()[-1]
    host.jp("start", server)
    server_ip = host.pod("server")["ip"]
    gateway = host.network.split("/")[0]
    out = run_sh(host, f"ping -c1 -W5 {server_ip} && ping -c1 -W5 {gateway} && ip -4 -o addr")
    addresses = [line.split()[3] for line in out.stdout.splitlines() if " inet " in line]
    assert len([a for a in addresses if not a.startswith("127.")]) == 1
    assert f"{server_ip}/" not in out.stdout.split("ip -4")[-1]  # sees only its own address


def test_port_forward_and_removal(host: Host) -> None:
    import_web_image(host)
    host.start()
    port = 20000 + secrets.randbelow(20000)
    pod = host.jp("prepare", "example.com/web", "-p", f"http:{port}").stdout.split()[-1]
    clash = host.jp("prepare", "example.com/web", "-p", f"http:{port}", check=False)
    assert clash.returncode == 1
    assert "already forwarded" in clash.stderr
    host.jp("start", pod)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert body == b"hello from the pod\n"
    host.jp("destroy", pod)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=3)
    rules = subprocess.run(["nft", "list", "table", "ip", "jetpack"], capture_output=True,
                           text=True).stdout
    assert pod not in rules


def test_on_failure_restarts_with_real_processes(host: Host) -> None:
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--restart", "on-failure:3", "--exec",
                  "/bin/sh -c 'echo attempt; exit 1'").stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 1
    assert out.stdout.count("attempt") == 4
    assert host.pod(pod)["state"] == "failed"
    restarts = [e for e in host.events(pod) if e["type"] == "app.restarting"]
    assert [e["attempt"] for e in restarts] == [1, 2, 3]
    delays = [float(str(e["delay"])) for e in restarts]
    assert delays == [0.1, 0.2, 0.4]  # restart.delay doubling


def test_kill9_supervisor_adopts_and_applies_policy(host: Host) -> None:
    host.start()
    # A duration no other process on a shared machine runs: pgrep then counts only these apps.
    nap = f"sleep {secrets.randbelow(10**6) + 10**6}"
    pods = []
    for name in ("one", "two"):
        pods.append(host.jp("prepare", "example.com/busybox", "--name", name, "--restart",
                            "always", "--exec", f"/bin/{nap}").stdout.split()[-1])
        host.jp("start", name)
    pids = {p: host.pod(p)["apps"][0] for p in pods}  # type: ignore[index]
    host.stop(signal.SIGKILL)
    for pod in pods:
        assert host.pod(pod)["state"] == "running"
    sleepers = subprocess.run(["pgrep", "-f", nap], capture_output=True, text=True)
    assert len(sleepers.stdout.split()) == 2  # the apps survived
    host.start()
    for pod in pods:
        host.wait_for("adoption", lambda p=pod: any(
            e["type"] == "pod.adopted" for e in host.events(p)))
    sleepers = subprocess.run(["pgrep", "-f", nap], capture_output=True, text=True)
    assert len(sleepers.stdout.split()) == 2  # not started twice
    # killing an adopted app triggers its restart policy
    victim = sleepers.stdout.split()[0]
    os.kill(int(victim), signal.SIGKILL)
    host.wait_for("a restart", lambda: any(e["type"] == "app.restarting"
                                           for p in pods for e in host.events(p)))
    host.wait_for("two sleepers again", lambda: len(subprocess.run(
        ["pgrep", "-f", nap], capture_output=True, text=True).stdout.split()) == 2)
    del pids
    # SIGTERM stops both gracefully and exits 0
    started = time.monotonic()
    assert host.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3 + 15
    for pod in pods:
        assert host.pod(pod)["state"] == "exited"
    assert subprocess.run(["pgrep", "-f", nap], capture_output=True).returncode == 1
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for pod in pods:
        assert f"jp{pod.replace('-', '')[:13]}" not in links


def test_no_supervisor_is_a_clear_error(host: Host) -> None:
    pod = host.jp("prepare", "example.com/busybox").stdout.split()[-1]
    out = host.jp("start", pod, check=False)
    assert out.returncode == 1
    assert "no supervisor is running" in out.stderr
    assert "jetpack daemon" in out.stderr


def test_isolators_memory_pids_and_capabilities(host: Host) -> None:
    host.start()
    limited = aci_from_entries(host.tmp / "limited.aci", [
        manifest_entry(manifest("example.com/limited", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
                "user": "0", "group": "0",
                "isolators": [{"name": "resource/memory", "value": {"limit": "64M"}},
                              {"name": "example.com/unknown", "value": True}]})),
        dir_entry("rootfs")])
    host.jp("import", str(limited))
    prepared = host.jp("prepare", "example.com/limited")
    assert "unknown isolator example.com/unknown" in prepared.stderr  # warned, not dropped
    pod = prepared.stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 128 + signal.SIGKILL, (out.stdout, out.stderr)  # the OOM killer
    assert host.pod(pod)["apps"][0]["signal"] == signal.SIGKILL  # type: ignore[index]
    # a fork bomb stops at the pod's pids limit (1024): the shell's fork fails, and the host
    # goes on
    bomb = host.jp("prepare", "example.com/busybox", "--exec",
                   "/bin/sh -c 'while true; do sleep 600 & done'").stdout.split()[-1]
    pids = Path("/sys/fs/cgroup/pids/jetpack") / bomb
    devices = Path("/sys/fs/cgroup/devices/jetpack") / bomb
    out = host.jp("run", bomb, check=False, timeout=300)
    assert "can't fork" in out.stdout or "fork" in out.stdout.lower(), out.stdout[-500:]
    assert out.returncode != 0
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    assert not pids.exists()  # torn down with the pod
    assert not devices.exists()
    # capabilities: NET_RAW is in the default set (ping works); removed, raw sockets fail
    gateway = host.network.split("/")[0]
    assert run_sh(host, f"ping -c1 -W5 {gateway}").returncode == 0
    no_raw = aci_from_entries(host.tmp / "noraw.aci", [
        manifest_entry(manifest("example.com/noraw", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/ping", "-c1", "-W2", gateway], "user": "0", "group": "0",
                "isolators": [{"name": "os/linux/capabilities-remove-set",
                               "value": {"set": ["CAP_NET_RAW"]}},
                              {"name": "os/linux/no-new-privileges", "value": True}]})),
        dir_entry("rootfs")])
    host.jp("import", str(no_raw))
    out = host.jp("run", "--rm", "example.com/noraw", check=False)
    assert out.returncode != 0
    assert "permitted" in out.stdout.lower() or "permission" in out.stdout.lower(), out.stdout
    cgroups = list(Path("/sys/fs/cgroup").glob("*/jetpack/*"))
    assert all(p.name not in (pod,) for p in cgroups)


def test_exec_console_ps_and_shared_volumes(host: Host, tmp_path: Path) -> None:
    host.start()
    source = tmp_path / "ro-source"
    source.mkdir()
    (source / "hello").write_text("from the host\n")
    pod = host.jp(
        "prepare", "--name", "pair",
        "example.com/busybox", "--app-name", "writer", "-m", "shared:/shared", "-m",
        "ro:/ro", "--exec", "/bin/sh -c 'echo written > /shared/note; "
        "touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused; sleep 300'",
        "example.com/busybox", "--app-name", "reader", "-m", "shared:/data",
        "--exec", "/bin/sleep 300",
        "-v", "shared,kind=empty,mode=0777", "-v", f"ro,kind=host,source={source},readOnly=true",
    ).stdout.split()[-1]
    host.jp("start", pod)
    host.wait_for("the writer", lambda: "ro-" in host.jp("logs", "pair:writer").stdout)
    assert "ro-refused" in host.jp("logs", "pair:writer").stdout
    out = host.jp("exec", "pair:reader", "--", "/bin/sh", "-c", "cat /data/note; hostname")
    assert out.stdout.splitlines() == ["written", "pair"]
    out = host.jp("exec", "pair:writer", "--", "/bin/cat", "/ro/hello")
    assert out.stdout == "from the host\n"
    code = host.jp("exec", "pair:reader", "--", "/bin/sh", "-c", "exit 7", check=False)
    assert code.returncode == 7
    console = host.jp("console", "pair:reader", input="id -u; echo $HOSTNAME; exit 0\n")
    assert "0" in console.stdout.split()
    ps = json.loads(host.jp("ps", "pair", "--json").stdout)
    assert {p["app"] for p in ps if "sleep 300" in p["command"]} == {"writer", "reader"}
    host.jp("stop", pod)
    out = host.jp("exec", "pair:reader", "--", "/bin/true", check=False)
    assert out.returncode == 1
    assert "not running" in out.stderr


def test_events_follower_exactly_once_across_kill9(host: Host) -> None:
    host.start()
    with (host.tmp / "follower.out").open("wb") as out, \
            (host.tmp / "follower.err").open("wb") as err:
        follower = subprocess.Popen(
            [sys.executable, "-m", "jetpack.cli.main", "-c", str(host.jp.conf), "events",
             "--json", "--since", "0"], stdout=out, stderr=err,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        first = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true"
                        ).stdout.split()[-1]
        host.jp("run", first)
        host.stop(signal.SIGKILL)  # no close frame, no supervisor.stopped
        host.jp("prepare", "example.com/busybox", "--exec", "/bin/true")  # written meanwhile
        host.start()
        second = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true"
                         ).stdout.split()[-1]
        host.jp("run", second)
        logged = [e["seq"] for e in host.events()]

        def caught_up() -> bool:
            lines = (host.tmp / "follower.out").read_text().splitlines()
            return len(lines) >= len(logged)

        host.wait_for("the follower", caught_up, timeout=60)
        time.sleep(0.5)  # nothing more may arrive: no duplicates
    finally:
        follower.kill()
        follower.wait(timeout=30)
    printed = [json.loads(line)["seq"] for line in
               (host.tmp / "follower.out").read_text().splitlines()]
    assert printed == logged  # every event exactly once, in order, gap-free
    assert logged == list(range(1, len(logged) + 1))


def shell_says(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    """Output up to ``marker``, answering busybox's cursor-position queries (ESC [ 6 n) as a
    terminal would: its line editor waits for the answer."""
    import select

    seen = b""
    answered = 0
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; got {seen[-300:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        assert chunk, f"the terminal closed before {marker!r}; got {seen[-300:]!r}"
        seen += chunk
        while seen.count(b"\x1b[6n") > answered:
            os.write(fd, b"\x1b[1;1R")
            answered += 1
    return seen


def test_run_t_gives_a_shell_in_a_pty_and_attach_reattaches(host: Host) -> None:
    host.start()
    master, slave = os.openpty()
    cli = [sys.executable, "-m", "jetpack.cli.main", "-c", str(host.jp.conf)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*cli, "run", "-t", "--name", "shell", "example.com/busybox",
                             "--exec", "/bin/sh"], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env=env)
    os.close(slave)
    try:
        shell_says(master, b"# ")  # the prompt: a shell on a terminal
        os.write(master, b"test -t 0 && echo tty-$((6*7))\r")
        assert b"tty-42" in shell_says(master, b"tty-42")
        os.write(master, b"\x10\x11")  # detach: the shell goes on
        assert proc.wait(timeout=30) == 0
        assert host.pod("shell")["state"] == "running"
    finally:
        os.close(master)
    master, slave = os.openpty()
    proc = subprocess.Popen([*cli, "attach", "shell"], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True, env=env)
    os.close(slave)
    try:
        shell_says(master, b"tty-42")  # the scrollback comes first
        os.write(master, b"echo again-$((2*3)); exit 5\r")
        shell_says(master, b"again-6")
        assert proc.wait(timeout=30) == 5
    finally:
        os.close(master)
    assert host.pod("shell")["state"] == "exited"



@pytest.mark.parametrize("storage", ["dir", "zfs"], indirect=True)
def test_envtest_with_handlers_on_both_drivers(host: Host, tmp_path: Path) -> None:
    """ace.md's executor checks, end to end on each storage driver: user, working directory,
    environment, exit status 3, and pre-start / post-stop in order in one rootfs."""
    _envtest(host, tmp_path)


def _envtest(host: Host, tmp_path: Path) -> None:
    host.start()
    image = aci_from_entries(tmp_path / "envtest.aci", [
        manifest_entry(manifest("example.com/envtest", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/sh", "-c", "echo app >> /log/order; id; pwd; env; hostname; "
                         "exit 3"],
                "user": "user", "group": "users", "workingDirectory": "/home/user",
                "eventHandlers": [
                    {"name": "pre-start", "exec": ["/bin/sh", "-c", "echo pre >> /log/order"]},
                    {"name": "post-stop", "exec": ["/bin/sh", "-c", "echo post >> /log/order"]}],
                "mountPoints": [{"name": "log", "path": "/log"}]})),
        dir_entry("rootfs")])
    host.jp("import", str(image))
    logs = tmp_path / "handlers"
    logs.mkdir(mode=0o777)
    os.chmod(logs, 0o777)
    pod = host.jp("prepare", "example.com/envtest", "-m", "log", "-v",
                  f"log,kind=host,source={logs}").stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 3, out.stderr
    assert "uid=1000(user) gid=100(users)" in out.stdout
    assert "\n/home/user\n" in out.stdout
    assert "AC_APP_NAME=envtest" in out.stdout
    assert "AC_METADATA_URL=http://" in out.stdout
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in out.stdout
    assert (logs / "order").read_text().split() == ["pre", "app", "post"]
    assert host.pod(pod)["apps"][0]["exit_status"] == 3  # type: ignore[index]
    host.jp("destroy", pod)


def test_a_pod_destroyed_as_soon_as_it_ended_leaves_nothing(host: Host) -> None:
    """``GET /wait`` answers once the pod has ended, while the supervisor may still be
    tearing its sandbox down: a ``start`` or ``destroy`` right after waits for that (the
    CLI's destroy goes through the supervisor while the sandbox is recorded), ``run`` answers
    after it, and nothing is left."""
    from jetpack.cli.client import ControlClient

    host.start()
    client = ControlClient(host.tmp / "jp.sock")
    for _ in range(3):
        uuid = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true").stdout.split()[-1]
        host.jp("start", uuid)
        assert client.request_sync("GET", f"/v1/pods/{uuid}/wait")["state"] == "exited"
        host.jp("start", uuid)  # at once: after the first start's teardown
        assert client.request_sync("GET", f"/v1/pods/{uuid}/wait")["state"] == "exited"
        host.jp("destroy", uuid)  # at once: after the second one's
        assert inventory.problems(inventory.take(host)) == []
        uuid = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true").stdout.split()[-1]
        host.jp("run", uuid)
        assert inventory.problems(inventory.take(host)) == []  # run answered after it
        host.jp("destroy", uuid)
