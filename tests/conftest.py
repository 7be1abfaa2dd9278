"""Shared fixtures: prerequisites (root, zfs-fuse pool, busybox), state roots, the CLI.

Outside CI a missing prerequisite skips the tests that need it; with CI=true it fails them, so a
broken CI machine can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import trio

    from jetpack.config import Config
    from jetpack.supervisor.daemon import Daemon

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def require(condition: bool, what: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


@pytest.fixture(scope="session")
def root() -> None:
    require(os.geteuid() == 0, "root (tests of namespaces, mounts and zfs need it)")


@pytest.fixture(scope="session")
def busybox() -> Path:
    """The statically linked busybox binary (Debian's busybox-static)."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    for path in candidates:
        if path.exists():
            out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True)
            static = "statically linked" in out.stdout or "static-pie" in out.stdout
            if out.returncode != 0 or static:
                return path
    require(False, "busybox-static (apt-get install busybox-static)")
    raise AssertionError("unreachable")


def make_busybox_rootfs(busybox: Path, rootfs: Path) -> Path:
    """A minimal userland: busybox with its applet links, /etc/passwd and /etc/group."""
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home/user",
                "var/www", "proc", "sys", "dev"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(rootfs / "bin/busybox", link.parent))
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
        "user:x:1000:1000:user:/home/user:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (rootfs / "etc/group").write_text(
        "root:x:0:\ndaemon:x:1:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n"
    )
    return rootfs


@pytest.fixture
def busybox_rootfs(busybox: Path, tmp_path: Path) -> Path:
    return make_busybox_rootfs(busybox, tmp_path / "rootfs")


@pytest.fixture(scope="session")
def zfs_pool(root: None) -> str:
    """The zfs-fuse pool the test run may use (``$JETPACK_TEST_POOL``, made by scripts/test.sh)."""
    pool = os.environ.get("JETPACK_TEST_POOL", "")
    require(bool(pool), "a zfs-fuse pool named by $JETPACK_TEST_POOL (scripts/test.sh makes one)")
    require(shutil.which("zfs") is not None, "the zfs command (apt-get install zfs-fuse)")
    ok = subprocess.run(["zpool", "list", "-H", pool], capture_output=True).returncode == 0
    require(ok, f"zfs pool {pool} is not imported")
    return pool


@pytest.fixture
def zfs_dataset(zfs_pool: str) -> Iterator[str]:
    """A fresh dataset name (not yet created) under the test pool; destroyed afterwards."""
    name = f"{zfs_pool}/t{uuid.uuid4().hex[:10]}"
    yield name
    for _ in range(50):
        subprocess.run(["zfs", "destroy", "-R", name], capture_output=True)
        if subprocess.run(["zfs", "list", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.2)  # zfs-fuse calls a dataset busy for a moment after its last user
    else:
        raise AssertionError(f"test dataset {name} could not be destroyed")


@dataclass
class Jetpack:
    """Runs the ``jetpack`` CLI as a subprocess against one configuration file: the checkout's
    (``python -m jetpack.cli.main`` with PYTHONPATH set to it) unless ``command`` names another
    jetpack (an installed one), which then runs without PYTHONPATH, from ``cwd``."""

    conf: Path
    root: Path
    command: tuple[str, ...] = ()
    cwd: Path | None = None

    def argv(self, *args: str) -> list[str]:
        command = self.command or (sys.executable, "-m", "jetpack.cli.main")
        return [*command, "-c", str(self.conf), *args]

    def env(self) -> dict[str, str]:
        if self.command:
            return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return dict(os.environ, PYTHONPATH=str(REPO))

    def __call__(self, *args: str, input: str | bytes | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=timeout,
            cwd=self.cwd,
            input=input if isinstance(input, str) or input is None else input.decode(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"jetpack {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc


def write_conf(path: Path, **settings: str) -> Path:
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


@pytest.fixture
def jetpack_dir(tmp_path: Path) -> Jetpack:
    """A CLI bound to a fresh ``dir``-storage state root under tmp_path (not yet initialized)."""
    root = tmp_path / "state"
    conf = write_conf(tmp_path / "jetpack.conf", **{"root.path": str(root),
                                                    "storage.driver": "dir"})
    return Jetpack(conf, root)


@pytest.fixture
def jetpack_zfs(tmp_path: Path, zfs_dataset: str) -> Jetpack:
    """A CLI bound to a fresh ``zfs``-storage state root (dataset under the test pool)."""
    root = tmp_path / "state"
    conf = write_conf(tmp_path / "jetpack.conf", **{"root.path": str(root),
                                                    "storage.driver": "zfs",
                                                    "root.zfs": zfs_dataset})
    return Jetpack(conf, root)


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FreeBSD's tools as stand-ins first on PATH (jail, jexec, jls, mount*, pfctl, rctl, ...),
    their shared state under tmp_path; the jail driver's attach primitive finds it too."""
    from jetpack.testing import freebsd_standins

    state = tmp_path / "standin-state"
    bin_dir = freebsd_standins.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setenv("JETPACK_STANDIN_STATE", str(state))
    return state


# A supervisor over the fake runtime on a fresh state root (test_daemon.py, test_openapi.py);
# a module with a ``config`` fixture of its own keeps it.
@pytest.fixture
def config(tmp_path: Path) -> Config:
    from jetpack.config import load_config
    from jetpack.keys import ensure_keys
    from jetpack.state import StateDB

    root = tmp_path / "root"
    root.mkdir()
    StateDB.for_root(root, create=True).close()
    config = load_config(None, [f"root.path={root}", f"supervisor.socket={tmp_path}/s/j.sock",
                                "pod.stop-timeout=2s"], environ={})
    ensure_keys(config)
    return config


@pytest.fixture
async def running(config: Config, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    from jetpack.supervisor.daemon import Daemon
    from jetpack.testing.fake_runtime import FakeRuntime

    daemon = Daemon(config, FakeRuntime(), mds_bind=["127.0.0.1:0"])
    await nursery.start(daemon.run)
    yield daemon
    daemon.request_stop()


# The real-host fixtures (``host``, ``storage``) live in podhost.py, which needs the names above.
# The OpenAPI answer check (tests/openapi_check.py); modules opt in with
# pytestmark = pytest.mark.usefixtures("api_matches_openapi").
from openapi_check import api_matches_openapi  # noqa: E402, F401  # a fixture, by name
from podhost import host, storage  # noqa: E402, F401  # import order: podhost imports conftest
