"""``jetpack ps`` of a pod under the jail driver (issue 17, finding 6): the processes come from
the driver's listing (``jls`` + ``ps -J``, against the stand-ins), not from Linux's /proc."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio

from jetpack.stage1.base import AppSpec, SandboxSpec
from jetpack.stage1.jail import JailDriver
from jetpack.state import StateDB
from jetpack.store.pods import PodStore

from acis import aci_from_dir, manifest
from conftest import Jetpack, write_conf

pytestmark = pytest.mark.freebsd


async def test_ps_lists_the_app_jails_processes(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    root = tmp_path / "state"
    jp = Jetpack(write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(root), "storage.driver": "dir", "isolation.driver": "jail"}), root)
    jp("init")
    image = aci_from_dir(tmp_path, busybox_rootfs, manifest("example.com/busybox"),
                         tmp_path / "busybox.aci")
    jp("import", str(image))
    pod = jp("prepare", "example.com/busybox", "--name", "jailed", "--exec",
             "/bin/sleep 300").stdout.split()[-1]
    # The stand-in devfs mounts nothing real; sh's background jobs need /dev/null.
    os.mknod(busybox_rootfs / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

    driver = JailDriver()
    handle = await driver.create_sandbox(SandboxSpec(pod, "jailed", tmp_path / "pod"))
    try:
        with trio.fail_after(30):
            process = await driver.start_app(handle, AppSpec(
                "busybox", busybox_rootfs, ("sh", "-c", "sleep 300 & exec sleep 301")))
            state = StateDB.for_root(root)
            try:
                with state.transaction() as tx:
                    PodStore(state).set_runtime(tx, pod, handle.to_json())
            finally:
                state.close()

            rows: list[dict[str, object]] = []
            while len(rows) < 2:
                out = await trio.to_thread.run_sync(lambda: jp("ps", "jailed", "--json"))
                rows = json.loads(out.stdout)
                await trio.sleep(0.05)
            assert sorted(str(r["command"]) for r in rows) == ["sleep 300", "sleep 301"]
            assert {r["app"] for r in rows} == {"busybox"}
            # Exactly what the jail holds, per ps -J of the app jail.
            jid = (await trio.run_process(["jls", "-j", f"jetpack/{pod}.busybox", "jid"],
                                          capture_stdout=True)).stdout.decode().strip()
            listed = (await trio.run_process(["ps", "-J", jid, "-o", "pid=", "-o", "command="],
                                             capture_stdout=True)).stdout.decode()
            assert sorted(str(r["pid"]) for r in rows) == sorted(
                line.split()[0] for line in listed.splitlines())

            text = await trio.to_thread.run_sync(lambda: jp("ps", "jailed"))
            assert text.stdout.splitlines()[0].split() == ["PID", "APP", "COMMAND"]
            assert "busybox  sleep 301" in text.stdout
            await driver.stop(handle, process, grace=1)
        process.close()
        out = await trio.to_thread.run_sync(lambda: jp("ps", "jailed", "--json"))
        assert json.loads(out.stdout) == []
    finally:
        await driver.destroy_sandbox(handle)
