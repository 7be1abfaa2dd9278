"""conf/jetpack.service passes systemd-analyze verify; jetpack.sdnotify speaks to a real socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetpack.errors import SupervisorError
from jetpack.sdnotify import notify

from conftest import REPO, require

UNIT = REPO / "conf" / "jetpack.service"
EXEC_START = "/usr/local/bin/jetpack"


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (keys may repeat in unit files)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def verify(unit_dir: Path, name: str = "jetpack.service") -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (apt-get install systemd)")
    assert analyze is not None
    return subprocess.run([analyze, "verify", str(unit_dir / name)], capture_output=True,
                          text=True, timeout=120)


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists on this machine.

    verify refuses a unit whose command is missing, and no jetpack is installed in
    /usr/local/bin here: the copy names a stand-in instead, every other line unchanged.
    """
    standin = tmp_path / "bin" / "jetpack"
    standin.parent.mkdir(parents=True)
    standin.write_text("#!/bin/sh\nexec sleep infinity\n")
    standin.chmod(0o755)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC_START} ") == 1
    (unit_dir / "jetpack.service").write_text(
        text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={standin} ")
    )
    return unit_dir


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    out = verify(installed_copy(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr  # verify only warns on a bad value: no warning allowed


def test_verify_is_live(tmp_path: Path) -> None:
    """The check can fail: the unit as shipped names a missing command here, and a bad value."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    shutil.copy(UNIT, unit_dir / "jetpack.service")
    if not Path(EXEC_START).exists():
        out = verify(unit_dir)
        assert out.returncode != 0
        assert f"Command {EXEC_START} is not executable" in out.stderr
    broken = installed_copy(tmp_path / "broken")
    path = broken / "jetpack.service"
    path.write_text(path.read_text().replace("KillMode=process", "KillMode=pods"))
    assert "Failed to parse kill mode" in verify(broken).stderr


def test_unit_never_lets_systemd_kill_pods() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["Service.KillMode"] == ["process"]
    assert settings["Service.Type"] == ["notify"]
    assert settings["Service.NotifyAccess"] == ["main"]
    assert settings["Service.ExecStart"] == [f"{EXEC_START} daemon $JETPACK_DAEMON_FLAGS"]
    assert settings["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    after = settings["Unit.After"][0].split()
    assert {"network-online.target", "zfs.target", "zfs-fuse.service"} <= set(after)
    assert settings["Unit.Wants"] == ["network-online.target"]
    # Long enough for pod.stop-timeout (10s by default) plus the SIGKILL and its confirmation.
    stop = settings["Service.TimeoutStopSec"][0]
    assert stop.endswith("s")
    assert int(stop[:-1]) >= 30


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_reads_the_process_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_abstract_socket() -> None:
    name = f"jetpack-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_a_service_manager() -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_to_a_missing_socket_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    with pytest.raises(SupervisorError, match=r"cannot notify the service manager at .*gone"):
        notify("READY=1", environ={"NOTIFY_SOCKET": missing})
    with pytest.raises(SupervisorError, match="only unix socket paths"):
        notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_systemd_notify_tool_agrees(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd's own client sends the same bytes to the same kind of socket."""
    sock, path = notify_socket
    tool = shutil.which("systemd-notify")
    require(tool is not None, "systemd-notify (apt-get install systemd)")
    assert tool is not None
    env = dict(os.environ, NOTIFY_SOCKET=path)
    # --no-block: no BARRIER=1 round trip, which needs a real service manager to answer.
    subprocess.run([tool, "--no-block", "READY=1"], env=env, check=True, timeout=30)
    theirs = sock.recv(4096)
    notify("READY=1", environ={"NOTIFY_SOCKET": path})
    ours = sock.recv(4096)
    assert b"READY=1" in theirs.split(b"\n")
    assert ours == b"READY=1"
