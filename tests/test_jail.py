"""The FreeBSD jail driver against the stand-ins of testing/standins (jail, jls, mount, umount,
mount_nullfs, ...) and the stand-in jail_attach.

The stand-ins parse arguments as the FreeBSD tools do, refuse what those would refuse and model
what the driver relies on (one mount table, jails with processes); their call log lets the tests
assert the exact command lines. An attached process is chrooted into its jail's path.
"""

from __future__ import annotations

import json
import os
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
    Stdio,
)
from jetpack.stage1.jail import JailDriver, jail_params
from jetpack.stage2.plan import DEFAULT_PATH

POD = "0f8e2c1a-5b7d-4e9f-8a6b-000000000002"


pytestmark = pytest.mark.freebsd


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


async def test_pod_jail_is_made_from_its_own_jail_conf(
    sandbox: SandboxHandle, standins: Path, tmp_path: Path
) -> None:
    conf = tmp_path / "pod/run/jail.conf"
    assert calls(standins, "jail") == [["jail", "-f", str(conf), "-c", f"jetpack/{POD}"]]
    root = tmp_path / "pod/run/root"
    jail = standin_state(standins)["jails"][f"jetpack/{POD}"]
    assert jail["params"] == {
        "name": f"jetpack/{POD}", "path": str(root), "host.hostname": "jailpod",
        "persist": "true", "mount.devfs": "true", "ip4.addr": "172.23.0.5",
        "allow.raw_sockets": "0", "children.max": "64", "devfs_ruleset": "4",
        "enforce_statfs": "2", "securelevel": "3",
    }
    assert sandbox.data["jid"] == jail["jid"]
    assert [m["mount_point"] for m in standin_state(standins)["mounts"]] == [str(root / "dev")]


async def test_app_runs_with_the_executor_environment_and_exact_credentials(
    driver: JailDriver, sandbox: SandboxHandle, standins: Path, busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    os.chown(busybox_rootfs / "var/www", 1000, 1000)
    app = AppSpec(
        name="web", rootfs=busybox_rootfs, user="user", group="user",
        working_directory="/var/www", metadata_url="http://172.23.0.1:1104/tok/",
        exec=("sh", "-c", "echo app >> order; id -u; id -g; id -G; env; exit 3"),
        pre_start=(("sh", "-c", "echo pre-start >> order"),),
        post_stop=(("sh", "-c", "echo post-stop >> order"),),
        mounts=(MountSpec("shared", "/shared"), MountSpec("data", "/data")),
    )
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.wait(sandbox, process)
    process.close()
    assert process.log_path is not None
    log = process.log_path.read_text()
    assert status == ExitStatus(code=3), log
    child = f"jetpack/{POD}.web"
    jail_calls = calls(standins, "jail")
    assert jail_calls[1] == ["jail", "-f", str(tmp_path / "pod/run/apps/web/jail.conf"), "-c",
                             child]
    assert calls(standins, "jexec") == []
    assert calls(standins, "mount_nullfs") == [
        ["mount_nullfs", "-o", "rw", str(tmp_path / "pod/volumes/shared"),
         str(busybox_rootfs / "shared")],
        ["mount_nullfs", "-o", "ro", str(tmp_path / "hostdata"), str(busybox_rootfs / "data")],
    ]
    assert (busybox_rootfs / "var/www/order").read_text().split() == [
        "pre-start", "app", "post-stop"]
    lines = log.splitlines()
    # appc's user and group, and no supplementary group: "user" is in "users" (100) in the
    # rootfs's /etc/group, which jexec -U (initgroups) would have added.
    assert lines[:3] == ["1000", "1000", "1000"]
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["PATH"] == DEFAULT_PATH  # not login.conf's
    assert env["AC_APP_NAME"] == "web"
    assert env["AC_METADATA_URL"] == "http://172.23.0.1:1104/tok"
    assert env["container"] == "jetpack"
    assert "HOME" not in env
    assert "USER" not in env
    assert "SHELL" not in env


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
    assert ["jail", "-f", str(tmp_path / "pod/run/apps/idle/jail.conf"), "-r",
            f"jetpack/{POD}.idle"] in calls(standins, "jail")
    assert calls(standins, "jail")[-1] == ["jail", "-f", str(tmp_path / "pod/run/jail.conf"),
                                           "-r", f"jetpack/{POD}"]
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


async def test_enter_runs_as_a_uid_without_passwd_entry_in_the_app_jail(
    driver: JailDriver, sandbox: SandboxHandle, standins: Path, busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    """Finding 4: appc allows a numeric uid with no /etc/passwd entry; jexec -U refused it."""
    app = AppSpec(name="target", rootfs=busybox_rootfs, exec=("sleep", "60"))
    out = tmp_path / "enter.out"
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        with out.open("wb") as sink:
            status = await driver.enter(
                sandbox, process, app, ["sh", "-c", "id -u; id -g; id -G; exit 4"],
                user="4242", group="4343", stdio=Stdio(0, sink.fileno(), sink.fileno()))
        await driver.stop(sandbox, process, grace=5)
    process.close()
    assert status == ExitStatus(code=4), out.read_text()
    assert out.read_text().split() == ["4242", "4343", "4343"]
    assert calls(standins, "jexec") == []


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
