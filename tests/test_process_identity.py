"""A pid's identity is checked (a /proc read on Linux, ps(1) on FreeBSD) in a worker thread,
never on the loop thread: recovering, signalling and waiting for a real process."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from jetpack.stage1 import identity, proc
from jetpack.stage1.base import AppProcess, ProcessIdentity, SandboxHandle
from jetpack.stage1.monitor import MonitoredApps


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def on_loop_thread() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


async def test_identity_checks_run_off_the_loop_thread(
    sleeper: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = identity.process_start_time
    checks: list[bool] = []  # one per identity check: was it on the loop thread?

    def checked(pid: int) -> int | None:
        checks.append(on_loop_thread())
        return real(pid)

    monkeypatch.setattr(identity, "process_start_time", checked)
    monkeypatch.setattr(proc, "process_start_time", checked)
    start = real(sleeper.pid)
    assert start is not None
    record = AppProcess("app", ProcessIdentity(sleeper.pid, start), tmp_path / "status", None)
    handle = SandboxHandle("test", "pod", {})
    apps = MonitoredApps()
    apps.limiter = trio.CapacityLimiter(1)

    found = await apps.recover_app(handle, record.to_json())  # opens a watch (Linux: a pidfd)
    assert found is not None
    assert found.watch is not None
    found.watch.close()
    # FreeBSD's watch checks the pid's identity before each signal (ps(1) there)
    found.watch = proc.KqueueWatch(found.identity)
    await apps.signal(handle, found, signal.SIGTERM)
    found.watch = None
    with trio.fail_after(10):
        status = await apps.wait(handle, found)  # opens a watch again, then waits
    assert status.signal == signal.SIGKILL  # no status file: what a killed monitor leaves
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert len(checks) == 3
    assert not any(checks), "a process identity check ran on the loop thread"
