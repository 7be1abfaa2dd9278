"""Stage1Runtime's own ordering, with a recording driver and storage: the apps' rootfs mounts
run while the sandbox is made, each app's start takes its mount, and whoever unmounts the pod
does so once those mounts have ended."""

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

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        # the mounts run meanwhile: let them go, and see them end before the sandbox does
        self.storage.release.set()
        assert await trio.to_thread.run_sync(self.storage.mounted.wait, 10)
        if self.fails:
            raise IsolationError("no sandbox")
        return SandboxHandle(self.name, spec.pod_uuid, {})

    async def start_app(self, handle: SandboxHandle, app: AppSpec, *,
                        stdio: Any = None) -> AppProcess:
        self.started.append(app)
        return AppProcess(app.name, ProcessIdentity(1, 1), Path("/status"), None)

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        await trio.lowlevel.checkpoint()


def _pod(apps: list[str]) -> PodRecord:
    spec = {"name": "", "rootfs": "", "exec": ["/bin/true"], "user": "0", "group": "0",
            "supplementary_gids": [], "working_directory": "/", "environment": [],
            "mounts": [], "pre_start": [], "post_stop": [], "metadata_url": "",
            "read_only_rootfs": False, "log_path": None, "log_max_bytes": 1}
    records = [AppRecord(app, "sha512-1", spec=json.dumps({**spec, "name": app})) for app in apps]
    return PodRecord(uuid=new_uuid(), name="p", state="starting", manifest="{}",
                     options=PodOptions(keep_image_etc=True), apps=records)


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
    assert storage.log == ["mount a", "unmount"]  # b was never mounted: the start failed
