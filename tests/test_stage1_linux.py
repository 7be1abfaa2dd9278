"""The Linux isolation driver end to end: real namespaces, real mounts, a real busybox rootfs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from jetpack.errors import IsolationError
from jetpack.stage1.base import (
    AppSpec,
    ExitStatus,
    MountSpec,
    PodVolume,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)
from jetpack.stage1.cgroups import host_layout
from jetpack.stage1.identity import process_start_time
from jetpack.stage1.linux import LinuxDriver, processes_in_netns
from jetpack.stage1.monitor import EarlyWatch, read_report
from jetpack.stage2.plan import DEFAULT_PATH

from conftest import require

pytestmark = [pytest.mark.root, pytest.mark.busybox]

POD = "8b1d2a53-6a0c-4c38-9a3e-000000000001"


def clone_rootfs(rootfs: Path, name: str) -> Path:
    """Each app gets its own rootfs, as the pod store gives it a clone of its image."""
    target = rootfs.parent / name
    shutil.copytree(rootfs, target, symlinks=True)
    return target


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(path) in line]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def log_contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


async def wait_for_text(path: Path, text: str) -> None:
    """Poll the app's log for ``text`` (a file offers nothing to wait on); the caller's
    fail_after bounds it."""
    while not await trio.to_thread.run_sync(log_contains, path, text):  # noqa: ASYNC110 - polling a file written by another process
        await trio.sleep(0.02)


@pytest.fixture
def driver(root: None) -> LinuxDriver:
    return LinuxDriver()


@pytest.fixture
async def sandbox(driver: LinuxDriver, tmp_path: Path) -> AsyncIterator[SandboxHandle]:
    host_dir = tmp_path / "hostdata"
    host_dir.mkdir()
    (host_dir / "given").write_text("from the host\n")
    spec = SandboxSpec(
        pod_uuid=POD, hostname="testpod", pod_dir=tmp_path / "pod",
        volumes=(PodVolume("shared", "empty", mode=0o1777, uid=1000, gid=100),
                 PodVolume("data", "host", source=str(host_dir), read_only=True)),
    )
    handle = await driver.create_sandbox(spec)
    yield handle
    with trio.CancelScope(shield=True):
        await driver.destroy_sandbox(handle)


async def test_app_sees_the_executor_environment(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    order = "/tmp/order"
    app = AppSpec(
        name="envtest", rootfs=busybox_rootfs,
        exec=("sh", "-c", f"echo app >> {order}; id; pwd; env; hostname; exit 3"),
        user="user", group="users", supplementary_gids=(1,), working_directory="/home/user",
        environment=(("GREETING", "hello"),), metadata_url="http://172.23.0.1:1104/token/",
        pre_start=(("sh", "-c", f"echo pre-start >> {order}"),
                   ("sh", "-c", f"echo pre-start-2 >> {order}")),
        post_stop=(("sh", "-c", f"echo post-stop >> {order}"),),
    )
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.wait(sandbox, process)
    process.close()
    assert status == ExitStatus(code=3)
    assert process.log_path is not None
    lines = process.log_path.read_text().splitlines()
    assert lines[0] == "uid=1000(user) gid=100(users) groups=1(daemon)"
    assert lines[1] == "/home/user"
    env = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    assert env["PATH"] == DEFAULT_PATH
    assert env["AC_APP_NAME"] == "envtest"
    assert env["AC_METADATA_URL"] == "http://172.23.0.1:1104/token"
    assert env["container"] == "jetpack"
    assert env["GREETING"] == "hello"
    assert lines[-1] == "testpod"
    assert (busybox_rootfs / "tmp/order").read_text().split() == [
        "pre-start", "pre-start-2", "app", "post-stop"]


async def test_user_given_as_path_takes_its_owner(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    os.chown(busybox_rootfs / "home/user", 1000, 1000)
    app = AppSpec(name="owner", rootfs=busybox_rootfs, exec=("id",), user="/home/user",
                  group="/home/user")
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    assert process.log_path is not None
    assert process.log_path.read_text().startswith("uid=1000(user) gid=1000(user)")


async def test_missing_working_directory_fails_clearly(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="nowd", rootfs=busybox_rootfs, exec=("true",),
                  working_directory="/does/not/exist")
    with pytest.raises(IsolationError, match="working directory /does/not/exist does not exist"):
        await driver.start_app(sandbox, app)


async def test_unknown_user_fails_clearly(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="nouser", rootfs=busybox_rootfs, exec=("true",), user="ghost")
    with pytest.raises(IsolationError, match="user 'ghost' is not in the app's /etc/passwd"):
        await driver.start_app(sandbox, app)


async def test_missing_executable_is_reported_as_127(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="noexe", rootfs=busybox_rootfs, exec=("/no/such/binary",))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.wait(sandbox, process)
    process.close()
    assert status.code == 127
    assert status.failed is not None
    assert "/no/such/binary" in status.failed


async def test_two_apps_share_an_empty_volume(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    def app(name: str, mine: str, theirs: str) -> AppSpec:
        script = (f"stat -c '%a %u %g' /shared; echo {name} > /shared/{mine}; "
                  f"while [ ! -e /shared/{theirs} ]; do sleep 0.05; done; cat /shared/{theirs}")
        return AppSpec(name=name, rootfs=clone_rootfs(busybox_rootfs, name),
                       exec=("sh", "-c", script), user="user", group="user",
                       mounts=(MountSpec("shared", "/shared"),))

    with trio.fail_after(20):
        first = await driver.start_app(sandbox, app("first", "a", "b"))
        second = await driver.start_app(sandbox, app("second", "b", "a"))
        assert await driver.wait(sandbox, first) == ExitStatus(code=0)
        assert await driver.wait(sandbox, second) == ExitStatus(code=0)
    for process in (first, second):
        process.close()
    assert first.log_path is not None
    assert second.log_path is not None
    assert first.log_path.read_text().split("\n")[:2] == ["1777 1000 100", "second"]
    assert second.log_path.read_text().split("\n")[:2] == ["1777 1000 100", "first"]


async def test_read_only_host_volume_refuses_writes(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path, tmp_path: Path
) -> None:
    app = AppSpec(name="writer", rootfs=busybox_rootfs,
                  exec=("sh", "-c", "cat /data/given; echo x > /data/new"),
                  mounts=(MountSpec("data", "/data"),))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.wait(sandbox, process)
    process.close()
    assert status.code != 0
    assert process.log_path is not None
    log = process.log_path.read_text()
    assert "from the host" in log
    assert "Read-only file system" in log
    assert not (tmp_path / "hostdata/new").exists()


async def test_stop_kills_an_app_that_ignores_sigterm_after_the_grace(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="stubborn", rootfs=busybox_rootfs,
                  exec=("sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert process.log_path is not None
        await wait_for_text(process.log_path, "ready")
        started = trio.current_time()
        status = await driver.stop(sandbox, process, grace=0.5)
        elapsed = trio.current_time() - started
    process.close()
    assert status == ExitStatus(signal=signal.SIGKILL)
    assert 0.5 <= elapsed < 5
    assert process_start_time(process.identity.pid) != process.identity.start_time


async def test_stop_ends_a_cooperative_app_with_sigterm_and_runs_post_stop(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="polite", rootfs=busybox_rootfs, exec=("sleep", "60"),
                  post_stop=(("sh", "-c", "echo cleaned > /tmp/post"),))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        status = await driver.stop(sandbox, process, grace=10)
    process.close()
    assert status == ExitStatus(signal=signal.SIGTERM)
    assert (busybox_rootfs / "tmp/post").read_text() == "cleaned\n"


async def test_enter_runs_inside_the_app(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path, tmp_path: Path
) -> None:
    app = AppSpec(name="target", rootfs=busybox_rootfs, exec=("sleep", "60"),
                  working_directory="/var/www")
    out_path = tmp_path / "enter.out"
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        with out_path.open("wb") as out, open(os.devnull, "rb") as devnull:  # noqa: ASYNC230 - opening is instant
            stdio = Stdio(devnull.fileno(), out.fileno(), out.fileno())
            status = await driver.enter(
                sandbox, process, app,
                ["sh", "-c", "hostname; pwd; id -u; cat /proc/1/cmdline | head -c 0; "
                             "ls /proc | grep -c '^[0-9]'; exit 5"],
                user="user", stdio=stdio)
        await driver.stop(sandbox, process, grace=5)
    process.close()
    assert status == ExitStatus(code=5)
    lines = out_path.read_text().split()
    assert lines[:3] == ["testpod", "/var/www", "1000"]
    # Its own pid namespace: the monitor, the app, and what the entered shell runs.
    assert int(lines[3]) < 10


async def test_foreground_app_writes_to_the_given_descriptors(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "fg.out"
    app = AppSpec(name="fg", rootfs=busybox_rootfs,
                  exec=("sh", "-c", "echo to-stdout; echo to-stderr >&2"))
    with (
        trio.fail_after(20),
        out_path.open("wb") as out,
        open(os.devnull, "rb") as devnull,  # noqa: ASYNC230 - opening is instant
    ):
        process = await driver.start_app(
            sandbox, app, stdio=Stdio(devnull.fileno(), out.fileno(), out.fileno()))
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    assert process.log_path is None
    assert out_path.read_text().split() == ["to-stdout", "to-stderr"]


async def test_log_is_bounded_by_rotation(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="chatty", rootfs=busybox_rootfs, log_max_bytes=4096,
                  exec=("sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line-$i; "
                                    "i=$((i+1)); done"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    assert process.log_path is not None
    rotated = process.log_path.with_name("log.1")
    assert process.log_path.stat().st_size <= 4096
    assert rotated.stat().st_size <= 4096
    assert process.log_path.read_text().splitlines()[-1] == "line-499"


async def test_destroy_leaves_nothing_behind(
    driver: LinuxDriver, busybox_rootfs: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(pod_uuid=POD, hostname="doomed", pod_dir=tmp_path / "pod",
                       volumes=(PodVolume("scratch", "empty"),))
    with trio.fail_after(20):
        handle = await driver.create_sandbox(spec)
        ns_files = [Path(p) for p in handle.data["namespaces"].values()]
        net_inode = ns_files[-1].stat().st_ino
        app = AppSpec(name="lingerer", rootfs=busybox_rootfs,
                      exec=("sh", "-c", "sleep 60 & sleep 60"),
                      mounts=(MountSpec("scratch", "/scratch"),))
        process = await driver.start_app(sandbox_handle := handle, app)
        assert processes_in_netns(net_inode)
        assert mounts_under(tmp_path)
        # Destroy without stopping first: the driver must kill what is left.
        await driver.destroy_sandbox(sandbox_handle)
        status = await driver.wait(handle, process)
    process.close()
    assert status.signal == signal.SIGKILL
    assert mounts_under(tmp_path) == []
    assert processes_in_netns(net_inode) == []
    assert processes_mentioning(str(tmp_path)) == []
    assert not any(p.exists() for p in ns_files)
    assert not (tmp_path / "pod/run").exists()
    assert (tmp_path / "pod/volumes/scratch").is_dir()  # volumes go with the pod, not the sandbox
    # Idempotent: a second destroy of a destroyed sandbox is harmless.
    await driver.destroy_sandbox(handle)


async def test_a_new_driver_adopts_a_running_app(
    sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="survivor", rootfs=busybox_rootfs, exec=("sleep", "60"))
    with trio.fail_after(20):
        process = await LinuxDriver().start_app(sandbox, app)
        handle_json = json.loads(json.dumps(sandbox.to_json()))
        process_json = json.loads(json.dumps(process.to_json()))
        process.close()

        successor = LinuxDriver()
        handle = await successor.recover(handle_json)
        assert handle == sandbox
        adopted = await successor.recover_app(handle, process_json)
        assert adopted is not None
        assert adopted.identity == process.identity
        status = await successor.stop(handle, adopted, grace=5)
        adopted.close()
        assert status == ExitStatus(signal=signal.SIGTERM)
        assert await successor.last_status(adopted) == status
        # Once it has exited, the same record is reported gone.
        assert await successor.recover_app(handle, process_json) is None


async def test_a_recycled_pid_is_reported_gone(
    driver: LinuxDriver, sandbox: SandboxHandle
) -> None:
    # Our own pid is alive, but not with this start time: as if the app's pid were reused.
    record = {"app": "ghost", "pid": os.getpid(),
              "start_time": (process_start_time(os.getpid()) or 0) + 1,
              "status_path": "/nonexistent/status", "log_path": None}
    assert await driver.recover_app(sandbox, record) is None


async def test_recover_reports_a_destroyed_sandbox_gone(
    driver: LinuxDriver, tmp_path: Path
) -> None:
    handle = await driver.create_sandbox(
        SandboxSpec(pod_uuid=POD, hostname="gone", pod_dir=tmp_path / "pod"))
    await driver.destroy_sandbox(handle)
    assert await driver.recover(handle.to_json()) is None


async def test_missing_host_volume_source_is_refused(
    driver: LinuxDriver, tmp_path: Path
) -> None:
    spec = SandboxSpec(pod_uuid=POD, hostname="x", pod_dir=tmp_path / "pod",
                       volumes=(PodVolume("data", "host", source=str(tmp_path / "absent")),))
    with pytest.raises(IsolationError, match="does not exist"):
        await driver.create_sandbox(spec)
    assert mounts_under(tmp_path) == []


# --- the fork server ------------------------------------------------------------------------------

def descriptor_targets(pid: int) -> set[str]:
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


def has_exited(pid: int, start_time: int | None) -> bool:
    """Gone, a zombie, or its pid reused by another process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z" or process_start_time(pid) != start_time


async def test_an_app_holds_nothing_of_the_fork_server(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="fds", rootfs=busybox_rootfs, exec=(
        "sh", "-c", "ls /proc/$$/fd; grep -E '^Sig(Blk|Ign)' /proc/self/status; echo listed; "
                    "sleep 30"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert process.log_path is not None
        await wait_for_text(process.log_path, "listed")
    try:
        assert driver.forks.pid is not None
        server = descriptor_targets(driver.forks.pid)
        monitor = descriptor_targets(process.identity.pid)
        # Neither its control socket, nor another helper's reply socket, nor its wakeup pipe:
        # one socket only, the one its go came on (its exit note goes back on it).
        assert len([t for t in monitor if t.startswith("socket:")]) == 1
        assert not [t for t in monitor & server if t.startswith(("socket:", "pipe:"))]
        # The app: the three stdio descriptors only, every signal default and unblocked.
        assert process.log_path.read_text().splitlines()[:6] == [
            "0", "1", "2", "SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000", "listed"]
    finally:
        with trio.fail_after(20):
            await driver.stop(sandbox, process, grace=5)
        process.close()


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def open_fds(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def monitors_in_advance(server: int) -> list[int]:
    """Processes running the server's program as pid 1 of a pid namespace of their own."""
    program = Path(f"/proc/{server}/cmdline").read_bytes()
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if (entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes() == program
                    and proc_status(int(entry))["NSpid"].split()[1:] == ["1"]):
                found.append(int(entry))
    return found


async def an_app_ran(driver: LinuxDriver, sandbox: SandboxHandle, rootfs: Path,
                     name: str) -> int:
    """Run ``true`` as app ``name`` to its end: the driver's fork server is up (its pid)."""
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, AppSpec(name=name, rootfs=rootfs,
                                                          exec=("true",)))
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    server = driver.forks.pid
    assert server is not None
    return server


async def the_monitor_in_advance(server: int) -> int:
    """The one monitor the fork server made in advance, once it is there."""
    with trio.fail_after(10):
        while len(monitors := monitors_in_advance(server)) != 1:  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.01)
    return monitors[0]


def fork_server_children(server: int) -> list[int]:
    return [int(pid) for pid in
            Path(f"/proc/{server}/task/{server}/children").read_text().split()]


async def test_the_next_app_starts_from_a_monitor_made_in_advance_that_holds_nothing(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    """Once idle, the fork server forks a helper in advance, and an app's monitor: each holds
    the server's stdio and the one socket it waits on, nothing else; the next app's monitor is
    that one, and the app holds nothing of it (nor of the server)."""
    server = await an_app_ran(driver, sandbox, busybox_rootfs, "first")
    with trio.fail_after(10):
        # the spare, once the process that makes the monitor in advance ended
        while len(children := fork_server_children(server)) != 1:  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.01)
    [spare] = children
    spare_start = process_start_time(spare)
    # once it waits (a spare just forked still closes what it inherited): stdio, its socket
    with trio.fail_after(10):
        while open_fds(spare) != [0, 1, 2, 3]:  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.01)
    assert os.readlink(f"/proc/{spare}/fd/3").startswith("socket:")
    assert os.readlink(f"/proc/{spare}/fd/3") not in descriptor_targets(server)  # its own end
    assert proc_status(spare)["SigBlk"] == "0000000000000000"
    assert os.getsid(spare) == spare  # a session of its own already
    # The next app's monitor, made in advance: pid 1 of a new pid namespace, nobody's child
    # (the process that made it ended), holding the server's stdio and its socket only.
    monitor = await the_monitor_in_advance(server)
    assert os.readlink(f"/proc/{monitor}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert int(proc_status(monitor)["PPid"]) not in (server, spare)
    with trio.fail_after(10):
        while open_fds(monitor) != [0, 1, 2, 3]:  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.01)
    assert os.readlink(f"/proc/{monitor}/fd/3").startswith("socket:")
    assert os.readlink(f"/proc/{monitor}/fd/3") not in descriptor_targets(server)
    assert proc_status(monitor)["SigBlk"] == "0000000000000000"
    assert os.getsid(monitor) not in (os.getsid(0), server, spare)
    app = AppSpec(name="fds", rootfs=busybox_rootfs, exec=(
        "sh", "-c", "ls /proc/$$/fd; grep -E '^Sig(Blk|Ign)' /proc/self/status; echo listed"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert process.identity.pid == monitor  # it runs the app: no helper forks one
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    assert not has_exited(spare, spare_start)  # kept for a request of another kind
    assert process.log_path is not None
    assert process.log_path.read_text().splitlines()[:6] == [
        "0", "1", "2", "SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000", "listed"]


async def test_an_app_starts_when_the_monitor_made_in_advance_was_killed(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    """A monitor made in advance that died (killed by an admin, say) is no failed start: the
    app gets a helper and a monitor of its own, as without one."""
    app = AppSpec(name="again", rootfs=busybox_rootfs, exec=("true",))
    server = await an_app_ran(driver, sandbox, busybox_rootfs, "again")
    killed = await the_monitor_in_advance(server)
    start_time = process_start_time(killed)
    os.kill(killed, signal.SIGKILL)
    with trio.fail_after(10):
        while not has_exited(killed, start_time):  # noqa: ASYNC110 - a process of no one's to wait on
            await trio.sleep(0.01)
        process = await driver.start_app(sandbox, app)
        assert process.identity.pid != killed
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()


async def test_a_killed_fork_server_is_restarted_on_next_use(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    app = AppSpec(name="again", rootfs=busybox_rootfs, exec=("true",))
    killed = await an_app_ran(driver, sandbox, busybox_rootfs, "again")
    start_time = process_start_time(killed)
    monitor = await the_monitor_in_advance(killed)
    monitor_start = process_start_time(monitor)
    os.kill(killed, signal.SIGKILL)
    with trio.fail_after(10):
        # the monitor it made in advance ends with it (EOF on its socket): nothing left behind
        while not (has_exited(killed, start_time) and has_exited(monitor, monitor_start)):  # noqa: ASYNC110 - a process of no one's to wait on
            await trio.sleep(0.01)
        process = await driver.start_app(sandbox, app)
        assert await driver.wait(sandbox, process) == ExitStatus(code=0)
    process.close()
    assert driver.forks.pid not in (None, killed)


_TREE = str(Path(__file__).resolve().parent.parent)
_OWNER = """
import json, sys
from pathlib import Path
import trio
from jetpack.stage1.base import AppSpec, SandboxSpec
from jetpack.stage1.linux import LinuxDriver

async def main():
    driver = LinuxDriver()
    handle = await driver.create_sandbox(SandboxSpec(
        pod_uuid="8b1d2a53-6a0c-4c38-9a3e-000000000002", hostname="owned",
        pod_dir=Path(sys.argv[1])))
    process = await driver.start_app(handle, AppSpec(
        name="orphan", rootfs=Path(sys.argv[2]), exec=("sleep", "60")))
    print(json.dumps({"server": driver.forks.pid, "monitor": process.identity.pid,
                      "handle": handle.to_json()}), flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


async def test_the_fork_server_ends_with_its_owner_and_the_apps_run_on(
    root: None, tmp_path: Path, busybox_rootfs: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": _TREE}
    async with trio.open_nursery() as nursery:
        owner = await nursery.start(partial(
            trio.run_process, [sys.executable, "-c", _OWNER, str(tmp_path / "pod"),
                               str(busybox_rootfs)], stdout=subprocess.PIPE, env=env, check=False))
        assert owner.stdout is not None
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await owner.stdout.receive_some()
                assert chunk, "the owner ended before it reported"
                line += chunk
        started = json.loads(line)
        handle = SandboxHandle.from_json(started["handle"])
        server, monitor = started["server"], started["monitor"]
        server_start, monitor_start = process_start_time(server), process_start_time(monitor)
        try:
            owner.kill()  # kill -9: the owner cannot say goodbye
            await owner.wait()
            with trio.fail_after(10):
                while not has_exited(server, server_start):  # noqa: ASYNC110 - no longer our process to wait on
                    await trio.sleep(0.01)
            assert not has_exited(monitor, monitor_start)
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(20):
                await LinuxDriver().destroy_sandbox(handle)
        assert has_exited(monitor, monitor_start)


def _waiting_processes(net_inode: int) -> tuple[int, int] | None:
    """(the monitor, the app's prepared process) once the monitor has forked it. The monitor
    is pid 1 of the app's pid namespace (the helper that forked it, briefly its parent in the
    same network namespace, is not)."""
    for pid in processes_in_netns(net_inode):
        with contextlib.suppress(OSError, KeyError):
            if proc_status(pid)["NSpid"].split()[-1] != "1":
                continue
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return pid, int(children[0])
    return None


def _as_waiting(monitor: int, prepared: int) -> tuple[int, list[str], bool]:
    """The prepared process's session id, real and effective uid, and whether its cgroups
    are the monitor's."""
    session = int(Path(f"/proc/{prepared}/stat").read_text().rsplit(")", 1)[1].split()[3])
    same = (Path(f"/proc/{prepared}/cgroup").read_text()
            == Path(f"/proc/{monitor}/cgroup").read_text())
    return session, proc_status(prepared)["Uid"].split()[:2], same


@pytest.mark.parametrize("how", ["go never comes", "stopped before go"])
async def test_an_app_prepared_before_go_runs_only_on_go(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path,
    monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    """The monitor forks the app's process before go, confined and waiting; a start cancelled
    (go never written) or a stop before go ends it without exec: nothing runs, nothing is left."""
    app = AppSpec(name="prepared", rootfs=busybox_rootfs, user="1000", group="100",
                  exec=("sh", "-c", "echo ran > /tmp/ran"))
    net_inode = os.stat(sandbox.data["namespaces"]["net"]).st_ino
    status_path = Path(sandbox.data["run_dir"]) / "apps" / app.name / "status"
    network = trio.Event()

    async def network_ready(pod_uuid: str) -> None:
        del pod_uuid
        await network.wait()

    monkeypatch.setattr(driver, "_network_ready", network_ready)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            started: list[Any] = []

            async def start() -> None:
                started.append(await driver.start_app(sandbox, app))

            nursery.start_soon(start)
            while (found := await trio.to_thread.run_sync(_waiting_processes, net_inode)) is None:  # noqa: ASYNC110 - /proc offers nothing to wait on
                await trio.sleep(0.01)
            monitor, prepared = found
            # Waiting for go as the app will run: leading its own session, as its user, in the
            # pod's cgroups (looked at until it is there: just forked, it is still getting
            # there; the deadline above fails the test if it never does).
            waiting = (prepared, ["1000", "1000"], True)
            while await trio.to_thread.run_sync(_as_waiting, monitor, prepared) != waiting:  # noqa: ASYNC110 - /proc offers nothing to wait on
                await trio.sleep(0.01)
            if how == "go never comes":
                nursery.cancel_scope.cancel()  # start_app closes the go pipe unwritten
            else:
                os.kill(monitor, signal.SIGTERM)
                network.set()
        if how == "stopped before go":
            process = started[0]
            status = await driver.wait(sandbox, process)
            process.close()
            assert status == ExitStatus(signal=signal.SIGTERM)
        while processes_in_netns(net_inode):  # noqa: ASYNC110 - /proc offers nothing to wait on
            await trio.sleep(0.01)
    if how == "go never comes":
        assert ExitStatus.from_json(json.loads(status_path.read_text())) == ExitStatus(
            code=127, failed="start cancelled")
    assert not (busybox_rootfs / "tmp/ran").exists()
    assert processes_in_netns(net_inode) == []


_JOIN = """
import sys
from jetpack.errors import IsolationError
from jetpack.stage1.apply import CgroupJoin
CgroupJoin([sys.argv[1]]).wait()
print(sum(line.rstrip().endswith("/" + sys.argv[2]) for line in open("/proc/self/cgroup")))
try:
    CgroupJoin([sys.argv[3]]).wait()
except IsolationError as exc:
    print(exc)
"""


def test_a_cgroup_join_is_done_when_wait_returns_and_a_failed_move_is_raised(
    tmp_path: Path
) -> None:
    """The monitor's move into the pod's cgroups, made by a thread while the rootfs is built:
    ``wait`` returns once the process is in (it then forks the app), and raises a move that
    failed (here a write that fails: ENOSPC)."""
    found = host_layout().controller_dir("pids")
    require(found is not None, "a pids cgroup controller")
    assert found is not None
    group = found[0] / f"jetpack-test-join-{os.getpid()}"
    failing = tmp_path / "failing"
    failing.mkdir()
    (failing / "cgroup.procs").symlink_to("/dev/full")
    group.mkdir()
    try:
        env = {**os.environ, "PYTHONPATH": _TREE}
        result = subprocess.run([sys.executable, "-c", _JOIN, str(group), group.name,
                                 str(failing)], env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        assert result.stdout.splitlines() == [
            "1", f"cannot join cgroup {failing}: No space left on device"]
    finally:
        group.rmdir()  # its one member has exited (and been reaped by run)


async def test_wait_answers_from_the_monitors_note_and_a_restart_waits_for_its_exit(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path
) -> None:
    """The monitor sends the status it wrote on the socket its go came on: ``wait`` answers
    from it (the status file's own words) while the monitor may still be exiting, and the
    same app's next start waits until that monitor is gone: one app's monitors never
    overlap. A monitor killed before its note falls back to the status file (none: SIGKILL)."""
    app = AppSpec(name="noted", rootfs=busybox_rootfs, exec=("sh", "-c", "exit 5"))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        assert process.note is not None
        first_monitor = process.identity.pid
        status = await driver.wait(sandbox, process)
        process.close()
        assert status == ExitStatus(code=5)
        assert json.loads(process.status_path.read_text()) == {"exit_status": 5}
        # the exiting monitor is remembered, not closed with the process
        assert (POD, "noted") in driver._exiting

        again = await driver.start_app(sandbox, app)
        assert (POD, "noted") not in driver._exiting
        assert process_start_time(first_monitor) != process.identity.start_time  # gone
        assert await driver.wait(sandbox, again) == ExitStatus(code=5)
        again.close()

        killed = await driver.start_app(sandbox, AppSpec(
            name="killed", rootfs=busybox_rootfs, exec=("sleep", "60")))
        os.kill(killed.identity.pid, signal.SIGKILL)  # the monitor: no status, no note
        assert await driver.wait(sandbox, killed) == ExitStatus(signal=signal.SIGKILL)
        killed.close()
    assert (POD, "killed") not in driver._exiting


async def test_an_exit_note_is_read_once_for_every_waiter_and_a_bad_one_is_no_status(
) -> None:
    """SocketExitNote: a line sent in pieces is one status for concurrent waiters (wait and
    stop); a waiter cancelled mid-line loses nothing; a socket closed without a full line,
    or with one that is no status, gives None (the caller reads the status file)."""
    from jetpack.stage1.monitor import SocketExitNote

    ours, theirs = socket.socketpair()
    note = SocketExitNote(ours)
    with trio.fail_after(10):
        theirs.send(b'{"exit_st')
        with trio.move_on_after(0.05):
            await note.status()  # cancelled with half a line read
        got: list[ExitStatus | None] = []

        async def waiter() -> None:
            got.append(await note.status())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
            await trio.sleep(0.01)
            theirs.send(b'atus": 7}\n')
        assert got == [ExitStatus(code=7), ExitStatus(code=7)]
    note.close()
    theirs.close()

    for sent in (b'{"exit_status": 7}', b"not json\n", b'{"signal": "x"}\n', b""):
        ours, theirs = socket.socketpair()
        note = SocketExitNote(ours)
        theirs.send(sent)
        theirs.close()
        with trio.fail_after(10):
            assert await note.status() is None, sent
        note.close()


# --- from the request to go -----------------------------------------------------------------------

async def test_the_report_ends_at_ready_and_tells_the_pid_as_soon_as_it_is_in() -> None:
    """The app's process, forked just before 'ready', holds its copy of the report pipe until
    it has closed what it inherited: the report ends at 'ready', not at the pipe's end, and
    the monitor's pid is told as soon as its line is complete (to watch it meanwhile)."""
    reading, writing = os.pipe()
    told: list[int] = []
    lines: list[list[str]] = []

    async def read() -> None:
        lines.append(await read_report(reading, told.append, until_ready=True))

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                os.write(writing, b"pid 4")
                await trio.testing.wait_all_tasks_blocked()
                assert told == []  # not a complete line yet
                os.write(writing, b"2\n")
                await trio.testing.wait_all_tasks_blocked()
                assert told == [42]
                assert lines == []
                os.write(writing, b"ready\n")  # the writer stays open
    finally:
        os.close(writing)
    assert lines == [["pid 42", "ready"]]
    assert told == [42]


async def test_the_monitor_is_watched_from_its_pid_line_and_go_needs_no_thread_after_ready(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start_app identifies the monitor and opens its pidfd (in a worker thread) as soon as
    the monitor reports its pid, while it still builds the app's rootfs: after 'ready' only
    go is left, no worker thread (and its wait for the GIL) in between."""
    calls: list[tuple[str, object]] = []
    real_open = EarlyWatch.open

    def opening(watch: EarlyWatch, pid: int) -> None:
        calls.append(("open", pid))
        real_open(watch, pid)

    real_thread = driver._thread

    async def thread(fn: Any, *args: Any) -> Any:
        calls.append(("thread", getattr(fn, "__name__", fn)))
        return await real_thread(fn, *args)

    monkeypatch.setattr(EarlyWatch, "open", opening)
    monkeypatch.setattr(driver, "_thread", thread)
    app = AppSpec(name="watched", rootfs=busybox_rootfs, exec=("true",))
    with trio.fail_after(20):
        process = await driver.start_app(sandbox, app)
        try:
            assert await driver.wait(sandbox, process) == ExitStatus(code=0)
        finally:
            process.close()
    assert ("open", process.identity.pid) in calls
    assert ("thread", "started") not in calls


async def test_a_start_failing_after_its_monitor_was_watched_keeps_nothing_of_it(
    driver: LinuxDriver, sandbox: SandboxHandle, busybox_rootfs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A monitor watched from its pid line that then fails (its rootfs refused) fails the
    start as before, with its own error; the watch is closed (no pidfd left in the
    supervisor) and the monitor is gone."""
    opened: list[int] = []
    real_open = EarlyWatch.open

    def opening(watch: EarlyWatch, pid: int) -> None:
        real_open(watch, pid)
        opened.append(pid)

    monkeypatch.setattr(EarlyWatch, "open", opening)
    app = AppSpec(name="refused", rootfs=busybox_rootfs, exec=("true",),
                  mounts=(MountSpec("shared", "/etc/passwd/inside"),))
    pidfds = _pidfds()
    with trio.fail_after(20), pytest.raises(IsolationError, match="goes through a file"):
        await driver.start_app(sandbox, app)
    assert len(opened) == 1
    assert _pidfds() == pidfds
    net_inode = os.stat(sandbox.data["namespaces"]["net"]).st_ino
    with trio.fail_after(10):  # the monitor is gone (killed, or exited by itself)
        while processes_in_netns(net_inode):  # noqa: ASYNC110 - /proc offers nothing to wait on
            await trio.sleep(0.01)


def _pidfds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]":
                found.add(fd)
    return found
