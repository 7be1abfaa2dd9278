"""The FreeBSD findings of issue 17, each against the stand-ins that behave like FreeBSD, and a
pod's whole life under the jail driver and the FreeBSD network hook: nothing may be left."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from jetpack.config import load_config
from jetpack.errors import IsolationError
from jetpack.stage1.base import (
    AppSpec,
    ExitStatus,
    MountSpec,
    NetworkPlan,
    PodVolume,
    SandboxSpec,
)
from jetpack.stage1.jail import JailDriver, jail_processes
from jetpack.stage1.network.hook import FreeBSDNetwork
from jetpack.stage1.network.ports import PortForward
from jetpack.testing import freebsd_standins

pytestmark = pytest.mark.freebsd
POD = "0f8e2c1a-5b7d-4e9f-8a6b-000000000017"


def state_of(standins: Path) -> dict[str, Any]:
    path = standins / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"jails": {}, "mounts": []}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def processes_rooted_in(path: Path) -> list[int]:
    return [pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
            if alive(pid) and root_of(pid) == str(path)]


def root_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def dev_null(rootfs: Path) -> None:
    """The stand-in devfs mounts nothing real; sh's background jobs need /dev/null."""
    os.mknod(rootfs / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(rootfs / "dev/null", 0o666)


def network(tmp_path: Path) -> FreeBSDNetwork:
    config = load_config(None, [f"root.path={tmp_path}/root", "jail.interface=lo1",
                                "jail.network=172.23.0.1/16"], environ={})
    hook = FreeBSDNetwork(config)
    hook.setup_host()
    return hook


def lo1(standins: Path) -> list[str]:
    return list(json.loads((standins / "ifconfig/lo1.json").read_text())["inet"])


def anchors(standins: Path) -> list[Path]:
    return sorted((standins / "pf").rglob("*.rules")) if (standins / "pf").exists() else []


# --- the stand-ins behave like FreeBSD --------------------------------------------------------


def test_standin_jail_refuses_devfs_without_dev(standins: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    refused = run("jail", "-c", "name=a", f"path={root}", "persist", "mount.devfs")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"jail: a: mount.devfs: {root}/dev: No such file or directory"
    assert state_of(standins)["jails"] == {}


def test_standin_jail_r_keeps_the_devfs_of_a_command_line_jail(
    standins: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    for _ in range(2):
        assert run("jail", "-c", "name=a", f"path={root}", "persist", "mount.devfs").returncode == 0
        assert run("jail", "-r", "a").returncode == 0
    # Two lifetimes, two devfs stacked on root/dev: jail(8) remembers no command-line params.
    assert [m["mount_point"] for m in state_of(standins)["mounts"]] == [str(root / "dev")] * 2
    assert run("umount", str(root / "dev")).returncode == 0
    assert run("umount", str(root / "dev")).returncode == 0
    assert "not a file system root" in run("umount", str(root / "dev")).stderr


def test_standin_jail_f_runs_exec_and_undoes_devfs(standins: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    marks = tmp_path / "marks"
    conf = tmp_path / "jail.conf"
    conf.write_text(f'"a" {{\n\tpath = "{root}";\n\tpersist;\n\tmount.devfs;\n'
                    f'\texec.prestart = "echo prestart >> {marks}";\n'
                    f'\texec.poststop = "echo poststop >> {marks}";\n}}\n')
    assert run("jail", "-f", str(conf), "-c", "a").returncode == 0
    assert len(state_of(standins)["mounts"]) == 1
    assert run("jail", "-f", str(conf), "-r", "a").returncode == 0
    assert state_of(standins) == {**state_of(standins), "jails": {}, "mounts": []}
    assert marks.read_text().split() == ["prestart", "poststop"]


def test_standin_jail_r_kills_what_jexec_started(standins: Path, tmp_path: Path,
                                                  busybox_rootfs: Path) -> None:
    assert run("jail", "-c", "name=a", f"path={busybox_rootfs}", "persist").returncode == 0
    dev_null(busybox_rootfs)
    sleeper = subprocess.Popen(["jexec", "a", "sh", "-c", "sleep 300 & sleep 300"])
    try:
        deadline = time.monotonic() + 10
        while len(run("ps", "-J", "a", "-o", "pid=", "-o", "command=").stdout.split()) < 6:
            assert time.monotonic() < deadline, "jexec's processes never showed in the jail"
            time.sleep(0.05)
        pids = [int(line.split()[0]) for line in
                run("ps", "-J", "a", "-o", "pid=", "-o", "command=").stdout.splitlines()]
        assert run("jail", "-r", "a").returncode == 0
        sleeper.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "jail -r left processes running"
            time.sleep(0.05)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_standin_pfctl_and_rctl_fail_like_freebsd(standins: Path) -> None:
    freebsd_standins.set_pf_loaded(standins, False)
    absent = run("pfctl", "-a", "jetpack/x", "-F", "all")
    assert (absent.returncode, absent.stderr.strip()) == (
        1, "pfctl: /dev/pf: No such file or directory")
    freebsd_standins.set_sysctl(standins, "kern.racct.enable", "0")
    disabled = run("rctl", "-a", "jail:x:memoryuse:deny=1g")
    assert (disabled.returncode, disabled.stderr.strip()) == (
        1, "rctl: RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable")
    assert run("sysctl", "-n", "kern.racct.enable").stdout.strip() == "0"


# --- findings ---------------------------------------------------------------------------------


async def test_finding1_pod_and_app_jails_get_their_dev(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    (busybox_rootfs / "dev").rmdir()  # an image without /dev
    driver = JailDriver()
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod"))
    try:
        with trio.fail_after(20):
            process = await driver.start_app(handle, AppSpec("a", busybox_rootfs, ("true",)))
            assert await driver.wait(handle, process) == ExitStatus(code=0)
        process.close()
        points = [m["mount_point"] for m in state_of(standins)["mounts"]]
        assert points == [str(tmp_path / "pod/run/root/dev"), str(busybox_rootfs / "dev")]
    finally:
        await driver.destroy_sandbox(handle)
    assert state_of(standins)["mounts"] == []


async def test_finding2_teardown_without_pf_removes_alias_and_run_dir(
    standins: Path, tmp_path: Path
) -> None:
    hook = network(tmp_path)
    freebsd_standins.set_pf_loaded(standins, False)
    driver = JailDriver(network=hook)
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod",
                                                     network=NetworkPlan("172.23.0.9")))
    assert lo1(standins) == ["172.23.0.9/32"]
    await driver.destroy_sandbox(handle)
    assert lo1(standins) == []
    assert not (tmp_path / "pod/run").exists()
    # A failed create shows its own error, not the teardown's, and leaves the address free.
    bad = SandboxSpec(POD, "p", tmp_path / "pod", network=NetworkPlan("172.23.0.9"),
                      annotations={"jetpack/jail.conf/no.such": "1"})
    with pytest.raises(IsolationError, match=r"unknown parameter: no\.such"):
        await driver.create_sandbox(bad)
    assert lo1(standins) == []


async def test_finding3_restarts_do_not_stack_devfs(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    driver = JailDriver()
    app = AppSpec("a", busybox_rootfs, ("sleep", "60"))
    for _ in range(3):
        handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod"))
        with trio.fail_after(20):
            process = await driver.start_app(handle, app)
            await driver.stop(handle, process, grace=5)
            process = await driver.start_app(handle, app)
            await driver.stop(handle, process, grace=5)
        process.close()
        assert len(state_of(standins)["mounts"]) <= 1  # the pod's devfs, once
        await driver.destroy_sandbox(handle)
        assert state_of(standins)["mounts"] == []


async def test_finding3_destroy_sweeps_stacked_devfs(standins: Path, tmp_path: Path) -> None:
    driver = JailDriver()
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod"))
    dev = str(tmp_path / "pod/run/root/dev")
    for _ in range(2):  # what the old command-line jails left behind
        assert run("mount", "-t", "devfs", "devfs", dev).returncode == 0
    await driver.destroy_sandbox(handle)
    assert state_of(standins)["mounts"] == []


async def test_finding5_params_reach_the_app_jails(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    driver = JailDriver(params={"allow.raw_sockets": "1"})
    handle = await driver.create_sandbox(SandboxSpec(
        POD, "p", tmp_path / "pod", annotations={"jetpack/jail.conf/sysvshm": "new"}))
    try:
        with trio.fail_after(20):
            process = await driver.start_app(handle, AppSpec("a", busybox_rootfs, ("true",)))
            await driver.wait(handle, process)
        process.close()
        params = state_of(standins)["jails"][f"jetpack/{POD}.a"]["params"]
        assert params["allow.raw_sockets"] == "1"
        assert params["sysvshm"] == "new"
        assert "children.max" not in params
    finally:
        await driver.destroy_sandbox(handle)


@pytest.mark.parametrize("script", [
    "sleep 300 & exec sleep 300",  # a daemon left behind after a polite stop
    "trap '' TERM; sleep 300 & wait",  # an app that ignores SIGTERM: the kill path
])
async def test_finding6_stop_leaves_nothing_running_in_the_app_jail(
    standins: Path, tmp_path: Path, busybox_rootfs: Path, script: str
) -> None:
    dev_null(busybox_rootfs)
    driver = JailDriver()
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod"))
    try:
        with trio.fail_after(30):
            process = await driver.start_app(handle, AppSpec("a", busybox_rootfs,
                                                             ("sh", "-c", script)))
            rows: list[dict[str, Any]] = []
            while len(rows) < 2:
                rows = await trio.to_thread.run_sync(jail_processes, handle.data, ["a"])
                await trio.sleep(0.05)
            assert {r["app"] for r in rows} == {"a"}
            await driver.stop(handle, process, grace=1)
        process.close()
        deadline = time.monotonic() + 10
        while any(alive(r["pid"]) for r in rows):
            assert time.monotonic() < deadline, f"left running: {rows}"
            await trio.sleep(0.05)
        assert f"jetpack/{POD}.a" not in state_of(standins)["jails"]
    finally:
        await driver.destroy_sandbox(handle)


async def test_finding8_teardown_kills_the_pods_pf_states(standins: Path, tmp_path: Path) -> None:
    hook = network(tmp_path)
    (standins / "pf").mkdir(exist_ok=True)
    (standins / "pf/states.json").write_text(json.dumps([
        {"src": "192.0.2.1", "dst": "172.23.0.9"}, {"src": "172.23.0.9", "dst": "192.0.2.1"},
        {"src": "192.0.2.1", "dst": "172.23.0.10"}]))
    driver = JailDriver(network=hook)
    handle = await driver.create_sandbox(SandboxSpec(
        POD, "p", tmp_path / "pod",
        network=NetworkPlan("172.23.0.9", (PortForward("tcp", 8080, 80),))))
    await driver.destroy_sandbox(handle)
    assert json.loads((standins / "pf/states.json").read_text()) == [
        {"src": "192.0.2.1", "dst": "172.23.0.10"}]


# --- a whole life -----------------------------------------------------------------------------


async def test_pod_lifecycle_under_the_jail_driver_leaves_nothing(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    hook = network(tmp_path)
    driver = JailDriver(network=hook)
    host_dir = tmp_path / "hostdata"
    host_dir.mkdir()
    spec = SandboxSpec(POD, "life", tmp_path / "pod",
                       network=NetworkPlan("172.23.0.7", (PortForward("tcp", 8080, 80),)),
                       volumes=(PodVolume("data", "host", source=str(host_dir)),))
    app = AppSpec("web", busybox_rootfs, ("sh", "-c", "echo $$ >> /data/runs; exec sleep 300"),
                  mounts=(MountSpec("data", "/data"),))
    runs = 0

    async def ran(count: int) -> None:
        # (the stand-in nullfs mounts nothing: /data is the rootfs's own directory)
        log = busybox_rootfs / "data/runs"
        while not log.exists() or len(log.read_text().split()) < count:  # noqa: ASYNC110 - the app writes it in another process
            await trio.sleep(0.05)

    with trio.fail_after(60):
        for _life in range(2):  # start, stop, and the pod started again (restart)
            handle = await driver.create_sandbox(spec)
            anchor = standins / f"pf/jetpack/{POD}.rules"
            assert "rdr pass on ! lo1" in anchor.read_text()
            assert lo1(standins) == ["172.23.0.7/32"]
            runs += 1
            process = await driver.start_app(handle, app)
            await ran(runs)
            assert await driver.stop(handle, process, grace=5) == ExitStatus(
                signal=signal.SIGTERM)
            process.close()
            runs += 1
            process = await driver.start_app(handle, app)  # the app restarted in its pod
            await ran(runs)
            await driver.stop(handle, process, grace=5)
            process.close()
            await driver.destroy_sandbox(handle)
            await driver.destroy_sandbox(handle)  # idempotent, as gc calls it again
    assert len((busybox_rootfs / "data/runs").read_text().split()) == 4
    state = state_of(standins)
    assert state["jails"] == {}
    assert state["mounts"] == []
    assert lo1(standins) == []
    assert [p for p in anchors(standins) if p.read_text().strip()] == []
    assert not (tmp_path / "pod/run").exists()
    assert await driver.recover(handle.to_json()) is None
    assert processes_rooted_in(busybox_rootfs) == []
