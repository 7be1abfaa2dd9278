"""Crash consistency at every step: the CLI or the supervisor is SIGKILLed at each named kill
point (jetpack.killpoint) of prepare, start, stop, destroy, import, build and gc; then the
supervisor restarts (adoption) and the host is checked from outside (tests/inventory.py).

Each test asserts first that the process died by SIGKILL (the point was reached), then what
the restart or ``jetpack gc`` must leave: the database agreeing with pod directories, image
trees, the tmp area, mounts, veths, nftables rules, cgroups and processes; no pod in
``starting``/``stopping``; a gap-free event log that says what happened; and the pod usable
again (started, stopped, destroyed normally). One host serves the whole module.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import inventory
import pytest

from jetpack.killpoint import ENV_VAR, KILLPOINTS

from conftest import REPO, make_busybox_rootfs
from podhost import Host, busybox_image, open_host

# Where each supervisor point leaves its pod once a fresh supervisor has adopted or reconciled
# it: a start cut before any app was recorded fails the pod ("start interrupted"); one cut
# after adopts it and completes the start; a stop cut while apps run is resumed; a stop cut
# after they ended is reconciled ("stop interrupted").
SUPERVISOR_POINTS = {
    "start.starting-recorded": "failed",
    "start.sandbox-dirs": "failed",
    "start.cgroup": "failed",
    "start.namespaces": "failed",
    "start.network": "failed",
    "start.sandbox-created": "failed",
    "start.sandbox-recorded": "failed",
    "start.rootfs-mounted": "failed",
    "start.app-spawned": "failed",
    "start.app-recorded": "running",
    "start.running-recorded": "running",
    "stop.stopping-recorded": "exited",
    "stop.app-stopped": "exited",
    "stop.final-recorded": "exited",
    "stop.network-detached": "exited",
    "stop.processes-killed": "exited",
    "stop.namespaces-removed": "exited",
    "stop.sandbox-destroyed": "exited",
}
# CLI points: True when `jetpack gc` is needed to remove what the cut left (the harness checks
# that it did leave something then), False when the host is consistent as it is.
CLI_POINTS = {
    "prepare.cloned": True,
    "prepare.recorded": False,
    "destroy.deleted": True,
    "import.extracted": True,
    "import.sealed": True,
    "build.tree": True,
    "build.written": True,
    "gc.pod-removed": False,
}
SETTLE = 60.0


def _killpoint_calls() -> list[str]:
    """The name of every ``killpoint("...")`` call in the product's code."""
    found = []
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "bench")]
        for name in files:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(Path(top, name).read_text())
            found += [node.args[0].value for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                      and node.func.id == "killpoint" and node.args
                      and isinstance(node.args[0], ast.Constant)]
    return found


def test_every_kill_point_is_listed_placed_once_and_exercised() -> None:
    calls = _killpoint_calls()
    assert sorted(calls) == sorted(KILLPOINTS), "KILLPOINTS and the killpoint() calls differ"
    assert len(set(KILLPOINTS)) == len(KILLPOINTS)
    assert sorted(KILLPOINTS) == sorted([*SUPERVISOR_POINTS, *CLI_POINTS])


def test_an_unarmed_kill_point_does_nothing_and_an_armed_one_kills() -> None:
    script = "from jetpack.killpoint import killpoint; killpoint('prepare.cloned'); print('ok')"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    calm = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True)
    assert (calm.returncode, calm.stdout) == (0, "ok\n")
    env[ENV_VAR] = "prepare.recorded"  # another point
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 0
    env[ENV_VAR] = "prepare.cloned"
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def crash_rootfs(root: None, busybox: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(busybox, tmp_path_factory.mktemp("crash-rootfs") / "rootfs")


@pytest.fixture(scope="module")
def crash_host(crash_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    with open_host(tmp_path_factory.mktemp("crash"), crash_rootfs,
                   {"storage.driver": "dir"}) as host:
        yield host


def _problems(host: Host) -> list[str]:
    return inventory.problems(inventory.take(host))


def _prepare(host: Host) -> str:
    """A pod with an empty volume (an app that sleeps): every kind of resource a pod holds."""
    return host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 600",
                   "-v", "data,kind=empty", "-m", "data:/data").stdout.split()[-1]


def _killed(host: Host, *args: str, point: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(host.jp.argv(*args), env={**host.jp.env(), ENV_VAR: point},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, \
        f"kill point {point} was not reached: exit {proc.returncode}\n{proc.stderr}"
    return proc


def _state(host: Host, uuid: str) -> str | None:
    pods = {p["uuid"]: p["state"] for p in json.loads(host.jp("list", "--json").stdout)}
    return pods.get(uuid)


def _settled(host: Host, uuid: str) -> str:
    host.wait_for(f"pod {uuid} to settle",
                  lambda: _state(host, uuid) not in inventory.TRANSITIONAL, timeout=SETTLE)
    state = _state(host, uuid)
    assert state is not None
    return state


def _restart_and_destroy(host: Host, uuid: str, state: str) -> None:
    """The pod starts again (unless it runs) and is destroyed normally (which stops it
    through the supervisor). What it leaves behind, the next test's inventory sees (it
    takes the whole host), and the last one's, the module's final check."""
    if state != "running":
        host.jp("start", uuid)
    host.jp("destroy", uuid)


@pytest.mark.parametrize("point", list(SUPERVISOR_POINTS))
def test_supervisor_killed_at(crash_host: Host, point: str) -> None:
    host = crash_host
    host.start(env={ENV_VAR: point})
    uuid = _prepare(host)
    if point.startswith("stop."):
        host.jp("start", uuid)
        cut = host.jp("stop", uuid, check=False)
    else:
        cut = host.jp("start", uuid, check=False)
    assert host.daemon is not None
    code = host.daemon.wait(timeout=60)
    host.daemon = None
    assert code == -signal.SIGKILL, f"kill point {point} was not reached: exit {code}"
    assert cut.returncode != 0
    host.start()  # adopts or reconciles what the killed one left
    try:
        assert _settled(host, uuid) == SUPERVISOR_POINTS[point]
        assert _problems(host) == []  # no gc needed: the restart settles everything
        last = [e for e in host.events(uuid) if str(e["type"]).startswith("pod.")][-1]
        if SUPERVISOR_POINTS[point] == "failed":
            assert last["type"] == "pod.failed"
            assert "start interrupted" in str(last["reason"])
        elif SUPERVISOR_POINTS[point] == "running":
            assert last["type"] in ("pod.started", "pod.adopted")
        else:
            assert last["type"] == "pod.exited"
        _restart_and_destroy(host, uuid, SUPERVISOR_POINTS[point])
    finally:
        host.stop()


# `run --rm IMAGE` prepares and destroys in the supervisor (POST /v1/run): the same kill points
# cut the supervisor there. True when `jetpack gc` must remove what the cut left.
RUN_POINTS = {"prepare.cloned": True, "prepare.recorded": False, "destroy.deleted": True}


@pytest.mark.parametrize("point", list(RUN_POINTS))
def test_supervisor_killed_in_run_rm_at(crash_host: Host, point: str) -> None:
    host = crash_host
    host.start(env={ENV_VAR: point})
    cut = host.jp("run", "--rm", "example.com/busybox", "--exec", "/bin/true", check=False)
    assert host.daemon is not None
    code = host.daemon.wait(timeout=60)
    host.daemon = None
    assert code == -signal.SIGKILL, f"kill point {point} was not reached: exit {code}"
    assert cut.returncode != 0
    host.start()
    try:
        pods = json.loads(host.jp("list", "--json").stdout)
        if point == "prepare.recorded":  # a whole prepared pod, never started: as prepare's
            assert [p["state"] for p in pods] == ["prepared"]
            assert _problems(host) == []
            host.jp("destroy", pods[0]["uuid"])
        else:  # never a half-made or half-destroyed pod in the list: files only gc sees
            assert pods == []
            assert _problems(host) != [], f"{point} left nothing: the harness would not see it"
            assert "removed" in host.jp("gc").stdout
        assert _problems(host) == []
        assert host.jp("gc").stdout.count("removed") == 0
    finally:
        host.stop()


def _build_dir(tmp: Path) -> Path:
    ctx = tmp / "build-ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "build.sh").write_text(
        "echo built > /etc/built\n"
        "cat > /jetpack-build/manifest.json <<EOF\n"
        '{"name": "example.com/built"}\n'
        "EOF\n")
    return ctx


@pytest.mark.parametrize("point", list(CLI_POINTS))
def test_cli_killed_at(crash_host: Host, crash_rootfs: Path, point: str) -> None:
    host = crash_host
    rootfs = crash_rootfs
    uuid = None
    if point.startswith("prepare."):
        _killed(host, "prepare", "example.com/busybox", "--exec", "/bin/sleep 600",
                "-v", "data,kind=empty", "-m", "data:/data", point=point)
    elif point.startswith("destroy."):
        uuid = _prepare(host)
        _killed(host, "destroy", uuid, point=point)
    elif point.startswith("import."):
        aci = busybox_image(host.tmp, rootfs, f"example.com/{point}")
        _killed(host, "import", str(aci), point=point)
    elif point.startswith("build."):
        _killed(host, "build", "example.com/busybox", str(_build_dir(host.tmp)), "sh",
                "build.sh", point=point)
    else:  # gc: a pod that exited, removed by gc --grace 0s
        host.start()
        try:
            uuid = _prepare(host)
            host.jp("start", uuid)
            host.jp("stop", uuid)
        finally:
            host.stop()
        _killed(host, "gc", "--grace", "0s", point=point)
        assert _state(host, uuid) is None
    left = _problems(host)
    if CLI_POINTS[point]:
        assert left != [], f"{point} left nothing: the harness would not see a leftover"
        gc = host.jp("gc")
        assert "removed" in gc.stdout
    assert _problems(host) == []
    # what was cut can be done again
    if point.startswith("import."):
        host.jp("import", str(host.tmp / f"example.com_{point}.aci"))
    elif point == "build.written":  # (build.tree's cut came before its command ran)
        host.jp("build", "example.com/busybox", str(_build_dir(host.tmp)), "sh", "build.sh")
    elif point == "prepare.recorded":
        (uuid,) = [p["uuid"] for p in json.loads(host.jp("list", "--json").stdout)]
        host.jp("destroy", uuid)
    assert _problems(host) == []
    assert host.jp("gc").stdout.count("removed") == 0  # gc finds nothing more


def test_killed_import_or_build_leaves_a_locked_tree_alone(crash_host: Host) -> None:
    """gc spares a staging tree or build scratch whose owner lives (its lock is held)."""
    host = crash_host
    root = host.jp.root
    from jetpack.storage.base import lock_staging

    live = root / "tmp" / "tmp-live"
    live.mkdir()
    fd = lock_staging(live)
    try:
        host.jp("gc")
        assert live.is_dir()
    finally:
        os.close(fd)
    host.jp("gc")
    assert not live.exists()
    assert not (root / "tmp" / "tmp-live.lock").exists()


def test_host_is_clean_after_every_cut(crash_host: Host) -> None:
    """The last word on the shared host: after every cut and repair above, nothing is left
    (each test checks the host as the previous ones left it too)."""
    assert _problems(crash_host) == []
    assert json.loads(crash_host.jp("list", "--json").stdout) == []
