"""Stage1Runtime's own ordering, with a recording driver and storage: the apps' rootfs mounts
(each followed by the driver's prepare_app of that app) run while the sandbox is made, each app's
start takes its mount, and whoever unmounts the pod does so once those mounts have ended."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from jetpack.config import load_config
from jetpack.errors import IsolationError, StorageError
from jetpack.stage1.base import AppProcess, AppSpec, ProcessIdentity, SandboxHandle, SandboxSpec
from jetpack.store.pods import AppRecord, PodOptions, PodRecord, new_uuid
from jetpack.supervisor.stage1_runtime import Stage1Runtime


class Storage:
    """Mounts app by app, each waiting for ``release`` (set from the test); logs what it did."""

    def __init__(self, root: Path, failing: str | None = None) -> None:
        self.root, self.failing = root, failing
        self.log: list[str] = []
        self.release = threading.Event()
        self.mounted = threading.Event()  # one mount has been made
        self.lock = threading.Lock()

    def mount_app(self, pod_uuid: str, app: str) -> Path:
        assert self.release.wait(10)
        with self.lock:
            self.log.append(f"mount {app}")
        self.mounted.set()
        if app == self.failing:
            raise StorageError(f"cannot mount app {app}'s rootfs")
        return self.root / app

    def unmount_pod(self, pod_uuid: str) -> None:
        with self.lock:
            self.log.append("unmount")


class Driver:
    """Makes its sandbox only once the test says so; what start_app was given is kept."""

    name = "recording"

    def __init__(self, storage: Storage, fails: bool = False) -> None:
        self.storage, self.fails = storage, fails
        self.started: list[AppSpec] = []
        self.prepared: list[tuple[SandboxHandle, AppSpec, bool]] = []
        self.destroyed: list[SandboxHandle] = []
        self.stdio: list[bool] = []  # by start: was it given a terminal

    def plan_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        return SandboxHandle(self.name, spec.pod_uuid, {"planned": True})

    def prepare_app(self, planned: SandboxHandle, app: AppSpec, *, tty: bool) -> None:
        with self.storage.lock:
            self.storage.log.append(f"prepare {app.name}")
        self.prepared.append((planned, app, tty))

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        # the mounts run meanwhile: let them go, and see them end before the sandbox does
        self.storage.release.set()
        assert await trio.to_thread.run_sync(self.storage.mounted.wait, 10)
        if self.fails:
            raise IsolationError("no sandbox")
        return self.plan_sandbox(spec)

    async def start_app(self, handle: SandboxHandle, app: AppSpec, *,
                        stdio: Any = None) -> AppProcess:
        self.started.append(app)
        self.stdio.append(stdio is not None)
        return AppProcess(app.name, ProcessIdentity(1, 1), Path("/status"), None)

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        with self.storage.lock:
            self.storage.log.append("destroy")
        self.destroyed.append(handle)
        await trio.lowlevel.checkpoint()


def _pod(apps: list[str], tty: bool = False) -> PodRecord:
    spec = {"name": "", "rootfs": "", "exec": ["/bin/true"], "user": "0", "group": "0",
            "supplementary_gids": [], "working_directory": "/", "environment": [],
            "mounts": [], "pre_start": [], "post_stop": [], "metadata_url": "",
            "read_only_rootfs": False, "log_path": None, "log_max_bytes": 1}
    records = [AppRecord(app, "sha512-1", spec=json.dumps({**spec, "name": app})) for app in apps]
    return PodRecord(uuid=new_uuid(), name="p", state="starting", manifest="{}",
                     options=PodOptions(keep_image_etc=True, tty=tty), apps=records)


def _runtime(tmp_path: Path, storage: Storage, driver: Driver) -> Stage1Runtime:
    config = load_config(None, [f"root.path={tmp_path}"], environ={})
    return Stage1Runtime(config, driver, storage)  # type: ignore[arg-type]  # the recording fakes


async def test_apps_are_mounted_while_the_sandbox_is_made_and_started_on_that_mount(
    tmp_path: Path
) -> None:
    storage = Storage(tmp_path)
    driver = Driver(storage)
    runtime = _runtime(tmp_path, storage, driver)
    pod = _pod(["a", "b"])
    sandbox = await runtime.create_sandbox(pod)  # Driver waits for the first mount
    for app in pod.apps:
        await runtime.start_app(pod, sandbox, app)
    assert [a.rootfs for a in driver.started] == [tmp_path / "a", tmp_path / "b"]
    assert storage.log == ["mount a", "mount b"]  # once each: the starts took those mounts
    await runtime.start_app(pod, sandbox, pod.apps[0])  # a restart mounts again
    assert storage.log == ["mount a", "mount b", "mount a"]
    await runtime.destroy_sandbox(pod, sandbox)
    assert storage.log[-1] == "unmount"


async def test_a_sandbox_that_cannot_be_made_unmounts_once_its_mounts_ended(
    tmp_path: Path
) -> None:
    storage = Storage(tmp_path)
    runtime = _runtime(tmp_path, storage, Driver(storage, fails=True))
    with pytest.raises(IsolationError, match="no sandbox"):
        await runtime.create_sandbox(_pod(["a", "b"]))
    assert storage.log == ["mount a", "mount b", "unmount"]


async def test_a_mount_that_fails_fails_its_apps_start_and_the_teardown_unmounts(
    tmp_path: Path
) -> None:
    storage = Storage(tmp_path, failing="a")
    runtime = _runtime(tmp_path, storage, Driver(storage))
    pod = _pod(["a", "b"])
    sandbox = await runtime.create_sandbox(pod)
    with pytest.raises(StorageError, match="cannot mount app a"):
        await runtime.start_app(pod, sandbox, pod.apps[0])
    await runtime.destroy_sandbox(pod, sandbox)
    assert storage.log == ["mount a", "destroy", "unmount"]  # b was never mounted


async def test_each_app_is_prepared_after_its_mount_in_the_planned_sandbox_it_starts_in(
    tmp_path: Path
) -> None:
    storage = Storage(tmp_path)
    driver = Driver(storage)
    runtime = _runtime(tmp_path, storage, driver)
    pod = _pod(["a", "b"], tty=True)
    planned = SandboxHandle.from_json(await runtime.plan_sandbox(pod))
    sandbox = await runtime.create_sandbox(pod)
    for app in pod.apps:
        await runtime.start_app(pod, sandbox, app)
    terminal = runtime.terminal(pod.uuid, "a")
    assert terminal is not None
    terminal.close()
    # each prepare right after its app's mount, in the sandbox the starts got, for the very
    # spec (rootfs, log path) and stdio (a terminal for the first app of run -t) they got
    assert storage.log == ["mount a", "prepare a", "mount b", "prepare b"]
    assert [p[0] for p in driver.prepared] == [planned, planned]
    assert SandboxHandle.from_json(sandbox) == planned
    assert [p[1] for p in driver.prepared] == driver.started
    assert [p[2] for p in driver.prepared] == driver.stdio == [True, False]
    await runtime.start_app(pod, sandbox, pod.apps[1])  # a restart: no prepare
    assert storage.log[-1] == "mount b"
    await runtime.destroy_sandbox(pod, sandbox)


async def test_a_sandbox_that_cannot_be_made_removes_what_its_prepares_wrote_then_unmounts(
    tmp_path: Path
) -> None:
    storage = Storage(tmp_path)
    driver = Driver(storage, fails=True)
    runtime = _runtime(tmp_path, storage, driver)
    pod = _pod(["a", "b"])
    planned = SandboxHandle.from_json(await runtime.plan_sandbox(pod))
    with pytest.raises(IsolationError, match="no sandbox"):
        await runtime.create_sandbox(pod)
    # the planned sandbox is destroyed once the prepares ended (the driver's own cleanup
    # may have run before a prepare wrote), then the pod unmounted
    assert storage.log == ["mount a", "prepare a", "mount b", "prepare b", "destroy", "unmount"]
    assert driver.destroyed == [planned]
