"""The FreeBSD jail driver against stand-in jail/jexec/jls/mount_nullfs/umount executables.

The stand-ins parse arguments as the FreeBSD tools do and refuse what those would refuse; their
call log lets the tests assert the exact command lines. jexec runs the command on the host.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from jetpack.errors import IsolationError
from jetpack.stage1.base import (
    AppSpec,
    ExitStatus,
    MountSpec,
    NetworkPlan,
    PodVolume,
    SandboxHandle,
    SandboxSpec,
)
from jetpack.stage1.jail import JailDriver, jail_params
from jetpack.stage2.plan import DEFAULT_PATH
from jetpack.testing import freebsd_standins

POD = "0f8e2c1a-5b7d-4e9f-8a6b-000000000002"


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "standin-state"
    bin_dir = freebsd_standins.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    return state


def calls(state: Path, tool: str | None = None) -> list[list[str]]:
    log = state / "calls.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [e for e in entries if tool is None or e[0] == tool]


def standin_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"jails": {}, "mounts": []}


@pytest.fixture
def driver(standins: Path) -> JailDriver:
    return JailDriver(params={"allow.raw_sockets": "0"})


@pytest.fixture
async def sandbox(driver: JailDriver, tmp_path: Path) -> AsyncIterator[SandboxHandle]:
    host_dir = tmp_path / "hostdata"
    host_dir.mkdir()
    spec = SandboxSpec(
        pod_uuid=POD, hostname="jailpod", pod_dir=tmp_path / "pod",
        network=NetworkPlan("172.23.0.5"),
        volumes=(PodVolume("shared", "empty"), PodVolume("data", "host", source=str(host_dir),
                                                  read_only=True)),
        annotations={"jetpack/jail.conf/securelevel": "3", "unrelated": "x"},
    )
    handle = await driver.create_sandbox(spec)
    yield handle
    with trio.CancelScope(shield=True):
        await driver.destroy_sandbox(handle)


def test_params_layer_defaults_config_and_annotations() -> None:
    params = jail_params({"securelevel": "2", "devfs_ruleset": "4"}, {"securelevel": "1"},
                         {"jetpack/jail.conf/devfs_ruleset": "5", "other": "x"})
    assert params == {"securelevel": "1", "devfs_ruleset": "5"}
    with pytest.raises(IsolationError, match="not a parameter name"):
        jail_params({}, {}, {"jetpack/jail.conf/bad name": "1"})


async def test_pod_jail_command_line(
    sandbox: SandboxHandle, standins: Path, tmp_path: Path
) -> None:
    [create] = calls(standins, "jail")
    root = tmp_path / "pod/run/root"
    assert create == [
        "jail", "-c", f"name=jetpack/{POD}", f"path={root}", "host.hostname=jailpod",
        "persist", "mount.devfs", "ip4.addr=172.23.0.5", "allow.raw_sockets=0",
        "children.max=64", "devfs_ruleset=4", "enforce_statfs=2", "securelevel=3",
    ]
    assert sandbox.data["jid"] == standin_state(standins)["jails"][f"jetpack/{POD}"]["jid"]


async def test_app_runs_through_jexec_with_the_executor_environment(
    driver: JailDriver, sandbox: SandboxHandle, standins: Path, busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    app = AppSpec(
        name="web", rootfs=busybox_rootfs, user="user", group="user",
        working_directory="/var/www", metadata_url="http://172.23.0.1:1104/tok/",
        exec=("sh", "-c", "echo app >> order; env; exit 3"),
        pre_start=(("sh", "-c", "echo pre-start >> order"),),
        post_stop=(("sh", "-c", "echo post-stop >> order"),),
        mounts=(MountSpec("shared", "/shared"), MountSpec("data", "/data")),
    )
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.wait(sandbox, process)
    process.close()
    assert status == ExitStatus(code=3)
    child = f"jetpack/{POD}.web"
    jail_calls = calls(standins, "jail")
    assert jail_calls[1] == ["jail", "-c", f"name={child}", f"path={busybox_rootfs}",
                             "host=inherit", "ip4=inherit", "persist", "mount.devfs",
                             "devfs_ruleset=4", "securelevel=3"]
    assert calls(standins, "mount_nullfs") == [
        ["mount_nullfs", "-o", "rw", str(tmp_path / "pod/volumes/shared"),
         str(busybox_rootfs / "shared")],
        ["mount_nullfs", "-o", "ro", str(tmp_path / "hostdata"), str(busybox_rootfs / "data")],
    ]
    jexecs = calls(standins, "jexec")
    assert [c[:6] for c in jexecs] == [["jexec", "-d", "/var/www", "-U", "user", child]] * 3
    assert jexecs[1][6:] == list(app.exec)
    assert (busybox_rootfs / "var/www/order").read_text().split() == [
        "pre-start", "app", "post-stop"]
    assert process.log_path is not None
    env = dict(line.split("=", 1) for line in process.log_path.read_text().splitlines()
               if "=" in line)
    assert env["PATH"] == DEFAULT_PATH
    assert env["AC_APP_NAME"] == "web"
    assert env["AC_METADATA_URL"] == "http://172.23.0.1:1104/tok"
    assert env["container"] == "jetpack"


async def test_destroy_removes_jails_and_mounts(
    driver: JailDriver, standins: Path, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(pod_uuid=POD, hostname="gone", pod_dir=tmp_path / "pod",
                       volumes=(PodVolume("shared", "empty"),))
    with trio.fail_after(20):
        handle = await driver.create_sandbox(spec)
        app = AppSpec(name="idle", rootfs=busybox_rootfs, exec=("sleep", "60"),
                      mounts=(MountSpec("shared", "/shared"),))
        process = await driver.start_app(handle, app)
        assert standin_state(standins)["mounts"]
        status = await driver.stop(handle, process, grace=5)
        process.close()
        await driver.destroy_sandbox(handle)
    assert status == ExitStatus(signal=signal.SIGTERM)
    assert calls(standins, "jail")[-2:] == [["jail", "-r", f"jetpack/{POD}.idle"],
                                             ["jail", "-r", f"jetpack/{POD}"]]
    assert calls(standins, "umount") == [["umount", str(busybox_rootfs / "shared")]]
    assert standin_state(standins)["jails"] == {}
    assert standin_state(standins)["mounts"] == []
    assert not (tmp_path / "pod/run").exists()
    assert await driver.recover(handle.to_json()) is None


async def test_recover_finds_the_jail_by_jls(
    driver: JailDriver, sandbox: SandboxHandle, standins: Path
) -> None:
    recovered = await JailDriver().recover(json.loads(json.dumps(sandbox.to_json())))
    assert recovered == sandbox
    assert ["jls", "-j", f"jetpack/{POD}", "jid"] in calls(standins, "jls")


async def test_enter_uses_jexec_in_the_app_jail(
    driver: JailDriver, sandbox: SandboxHandle, standins: Path, busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    app = AppSpec(name="target", rootfs=busybox_rootfs, exec=("sleep", "60"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.enter(sandbox, process, app, ["sh", "-c", "exit 4"], user="user")
        await driver.stop(sandbox, process, grace=5)
    process.close()
    assert status == ExitStatus(code=4)
    # The app's own jexec may be logged before or after this one: the monitor runs it
    # concurrently once start_app has returned.
    assert ["jexec", "-d", "/", "-U", "user", f"jetpack/{POD}.target", "sh", "-c",
            "exit 4"] in calls(standins, "jexec")


async def test_a_parameter_jail_rejects_is_reported(
    driver: JailDriver, standins: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(pod_uuid=POD, hostname="x", pod_dir=tmp_path / "pod",
                       annotations={"jetpack/jail.conf/no.such.param": "1"})
    with pytest.raises(IsolationError, match=r"unknown parameter: no\.such\.param"):
        await driver.create_sandbox(spec)
    assert standin_state(standins)["jails"] == {}


def test_standins_refuse_what_freebsd_refuses(standins: Path, tmp_path: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False)

    assert "needs a value" in run("jail", "-c", "name=a", f"path={tmp_path}", "securelevel").stderr
    assert "invalid integer" in run("jail", "-c", "name=a", f"path={tmp_path}",
                                    "securelevel=high").stderr
    assert "one of -c, -m or -r" in run("jail", "name=a").stderr
    assert "not found" in run("jail", "-r", "nosuchjail").stderr
    assert "not found" in run("jexec", "nosuchjail", "true").stderr
    assert "not found" in run("jls", "-j", "nosuchjail").stderr
    assert "not a file system root" in run("umount", str(tmp_path)).stderr
    assert "No such file" in run("mount_nullfs", "/nonexistent", str(tmp_path)).stderr
    ok = run("jail", "-c", "name=a", f"path={tmp_path}", "persist", "children.max=1")
    assert ok.returncode == 0, ok.stderr
    assert run("jls", "-j", "a", "jid", "name").stdout.split() == ["1", "a"]
    assert "mutually exclusive" in run("jexec", "-u", "x", "-U", "y", "a", "true").stderr
