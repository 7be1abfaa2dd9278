"""A pod's whole life under the jail driver through the real CLI and a real supervisor process
(``jetpack daemon``), against the FreeBSD stand-ins (issue 17, "Stand-ins"): prepare, start, an
app with a volume, a port forward and a memory isolator, stop, restart, destroy, gc. Nothing may
be left: no jail, mount, lo1 alias, pf anchor rule, rctl rule, pod state."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetpack.testing import freebsd_standins

from acis import aci_from_entries, dir_entry, manifest, manifest_entry
from podhost import Host, open_host

pytestmark = pytest.mark.freebsd


@pytest.fixture
def jail_host(root: None, tmp_path: Path, busybox_rootfs: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Host, Path]]:
    """A host whose supervisor runs the jail driver on lo1 with the stand-ins first on PATH
    (the CLI and ``jetpack daemon`` subprocesses inherit PATH and the stand-ins' state).
    The pod network is in 127.0.0.0/8, as FreeBSD hosts often give lo1 (on Linux every
    address of it is local, so the metadata service can bind the host address)."""
    state = tmp_path / "standin-state"
    bin_dir = freebsd_standins.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setenv("JETPACK_STANDIN_STATE", str(state))
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    settings = {"storage.driver": "dir", "isolation.driver": "jail",
                "jail.namePrefix": "jetpack/", "mds.port": str(20000 + secrets.randbelow(20000))}
    with open_host(tmp_path, busybox_rootfs, settings) as host:
        conf = host.jp.conf
        text = conf.read_text().replace(f"jail.interface = {host.bridge}", "jail.interface = lo1")
        conf.write_text(text.replace(f"jail.network = {host.network}",
                                     f"jail.network = {net}.1/24"))
        host.bridge, host.network = "lo1", f"{net}.1/24"
        yield host, state


def standin_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"jails": {}, "mounts": []}


def rctl_rules() -> list[str]:
    return subprocess.run(["rctl"], capture_output=True, text=True, check=True).stdout.split()


def lo1(state: Path) -> list[str]:
    path = state / "ifconfig/lo1.json"
    return list(json.loads(path.read_text())["inet"]) if path.exists() else []


def anchor_rules(state: Path) -> list[str]:
    pf = state / "pf"
    return [line for p in sorted(pf.rglob("*.rules")) for line in p.read_text().splitlines()
            if line.strip()] if pf.exists() else []


def test_pod_lifecycle_through_the_supervisor_under_the_jail_driver(
    jail_host: tuple[Host, Path], tmp_path: Path
) -> None:
    host, state = jail_host
    web = aci_from_entries(tmp_path / "web.aci", [
        manifest_entry(manifest("example.com/web", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/sh", "-c", "echo started >> /data/runs; exec sleep 300"],
                "user": "0", "group": "0",
                "ports": [{"name": "http", "protocol": "tcp", "port": 8080}],
                "isolators": [{"name": "resource/memory", "value": {"limit": "64M"}}]})),
        dir_entry("rootfs")])
    host.jp("import", str(web))
    data = tmp_path / "hostdata"
    data.mkdir()
    host.start()
    port = 20000 + secrets.randbelow(20000)
    pod = host.jp("prepare", "example.com/web", "-p", f"http:{port}", "-m", "data:/data",
                  "-v", f"data,kind=host,source={data}").stdout.split()[-1]
    jail = f"jetpack/{pod}"
    for _life in range(2):  # start, stop; the pod started again (restart)
        host.jp("start", pod)
        host.wait_for("the app", lambda: host.pod(pod)["state"] == "running")
        jails = standin_state(state)["jails"]
        assert jail in jails
        assert f"{jail}.web" in jails
        assert [m["source"] for m in standin_state(state)["mounts"]
                if m["fstype"] == "nullfs"] == [str(data)]  # the volume
        # the memory isolator as an rctl rule on the pod jail, with the pids limit
        assert f"jail:{jail}:memoryuse:deny=64000000" in rctl_rules()
        assert f"jail:{jail}:maxproc:deny=1024" in rctl_rules()
        assert len(lo1(state)) == 1
        assert any(f"port {port}" in rule or f"port = {port}" in rule
                   for rule in anchor_rules(state)), anchor_rules(state)
        host.jp("stop", pod)
        host.wait_for("the stop", lambda: host.pod(pod)["state"] != "running")
        assert rctl_rules() == []
        assert standin_state(state)["jails"] == {}
        assert lo1(state) == []
    host.jp("start", pod)
    host.wait_for("the app", lambda: host.pod(pod)["state"] == "running")
    host.jp("destroy", pod)
    host.jp("gc")
    host.jp("gc", "--network")
    host.stop()
    left = standin_state(state)
    assert left["jails"] == {}
    assert left["mounts"] == []
    assert lo1(state) == []
    assert anchor_rules(state) == []
    assert rctl_rules() == []
    assert json.loads(host.jp("list", "--json").stdout) == []
    assert not (host.jp.root / "pods" / pod).exists()


def test_prepare_refuses_limits_when_racct_is_disabled(
    jail_host: tuple[Host, Path], tmp_path: Path
) -> None:
    host, state = jail_host
    throttled = aci_from_entries(tmp_path / "throttled.aci", [
        manifest_entry(manifest("example.com/throttled", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/true"], "user": "0", "group": "0",
                "isolators": [{"name": "resource/block-bandwidth",
                               "value": {"default": True, "limit": "10M"}}]})),
        dir_entry("rootfs")])
    host.jp("import", str(throttled))
    # under the jail driver the block isolator is enforced (rctl throttles), not warned about
    prepared = host.jp("prepare", "example.com/throttled")
    assert "block-bandwidth" not in prepared.stderr
    pod = prepared.stdout.split()[-1]
    host.start()
    host.jp("start", pod)
    host.wait_for("the app", lambda: host.pod(pod)["state"] != "running")
    host.jp("destroy", pod)
    freebsd_standins.set_sysctl(state, "kern.racct.enable", "0")
    refused = host.jp("prepare", "example.com/throttled", check=False)
    assert refused.returncode != 0
    assert "resource/block-bandwidth" in refused.stderr
    assert "kern.racct.enable=1" in refused.stderr
    assert "/boot/loader.conf" in refused.stderr
    assert json.loads(host.jp("list", "--json").stdout) == []
    assert rctl_rules_unchecked(state) == ""


def rctl_rules_unchecked(state: Path) -> str:
    path = state / "rctl.rules"
    return path.read_text() if path.exists() else ""


def test_mount_points_get_the_pods_volumes_under_the_jail_driver(
    jail_host: tuple[Host, Path], tmp_path: Path
) -> None:
    """The ACE validator's pod under the jail driver: mount point ``database`` (/db) in two apps
    and no ``mounts``; with no pod volume of that name, one implicit empty volume is made and
    nullfs-mounted at each app's /db, read-only where the mount point says so."""
    host, state = jail_host
    for name, read_only in (("ace-main", False), ("ace-sidekick", True)):
        aci = aci_from_entries(tmp_path / f"{name}.aci", [
            manifest_entry(manifest(f"example.com/{name}", dependencies=[
                {"imageName": "example.com/busybox"}], app={
                    "exec": ["/bin/sleep", "300"], "user": "0", "group": "0",
                    "mountPoints": [{"name": "database", "path": "/db",
                                     "readOnly": read_only}]})),
            dir_entry("rootfs")])
        host.jp("import", str(aci))
    host.start()
    prepared = host.jp("prepare", "example.com/ace-main", "--app-name", "main",
                       "example.com/ace-sidekick", "--app-name", "sidekick")
    assert "implicit empty volume" in prepared.stderr
    pod = prepared.stdout.split()[-1]
    reified = json.loads(host.jp("manifest", pod).stdout)
    assert [v["name"] for v in reified["volumes"]] == ["database"]
    host.jp("start", pod)
    host.wait_for("the apps", lambda: host.pod(pod)["state"] == "running")
    volume = str(host.jp.root / "pods" / pod / "volumes" / "database")
    nullfs = {m["mount_point"]: m["options"] for m in standin_state(state)["mounts"]
              if m["fstype"] == "nullfs" and m["source"] == volume}
    assert len(nullfs) == 2, standin_state(state)["mounts"]  # one in each app's rootfs
    assert all(point.endswith("/db") for point in nullfs)
    assert sorted(nullfs.values()) == [["ro"], ["rw"]]
    host.jp("destroy", pod)
    host.stop()
    assert standin_state(state)["mounts"] == []


def test_socket_activation_is_refused_under_the_jail_driver(
    jail_host: tuple[Host, Path], tmp_path: Path
) -> None:
    """aci.md: the ACE MUST pass the listening sockets of a ``socketActivated`` port. The jail
    driver's monitor runs on the host, outside the pod jail's address: it cannot, so prepare
    refuses, naming the port, and makes nothing; the same image without it prepares."""
    host, _ = jail_host
    for name, activated in (("activated", True), ("plain", False)):
        aci = aci_from_entries(tmp_path / f"{name}.aci", [
            manifest_entry(manifest(f"example.com/{name}", dependencies=[
                {"imageName": "example.com/busybox"}], app={
                    "exec": ["/bin/true"], "user": "0", "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 8080,
                               "socketActivated": activated}]})),
            dir_entry("rootfs")])
        host.jp("import", str(aci))
    out = host.jp("prepare", "example.com/activated", check=False)
    assert out.returncode == 1
    assert "port http.socketActivated: socket activation is not supported by the jail " \
           "isolation driver" in out.stderr, out.stderr
    assert json.loads(host.jp("list", "--json").stdout) == []
    host.jp("prepare", "example.com/plain")
