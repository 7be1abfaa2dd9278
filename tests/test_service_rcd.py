"""rc.d/jetpack run for real: start, status, reload, stop and the rcvar check, on Linux.

Each command runs in a private mount namespace that lays the stand-ins over the paths FreeBSD
has (tests/data/service: rc.subr and rc.conf over /etc, daemon(8) over /usr/sbin, a recording
`jetpack daemon` over /usr/local/bin, and a fresh /var/run), so the script runs byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DATA, REPO, require

pytestmark = pytest.mark.freebsd
SCRIPT = REPO / "rc.d" / "jetpack"
STANDINS = DATA / "service"
SHELLS = ["dash", "bash"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll ``condition`` (a process we do not own changing files) until true or the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class FreeBSDLayout:
    """A stand-in FreeBSD host under ``top``; ``rc(...)`` runs rc.d/jetpack against it."""

    top: Path
    shell: str

    @property
    def run(self) -> Path:
        return self.top / "run"

    @property
    def log(self) -> Path:
        return self.top / "jetpack.log"

    def rc_conf(self, text: str) -> None:
        (self.top / "etc" / "rc.conf").write_text(text)

    def rc(self, command: str, *, stop_seconds: float = 0) -> subprocess.CompletedProcess[str]:
        t = self.top
        setup = (
            f"mount -t overlay overlay -o lowerdir={t}/etc:/etc /etc && "
            f"mount -t overlay overlay -o lowerdir={t}/sbin:/usr/sbin /usr/sbin && "
            f"mount -t overlay overlay -o lowerdir={t}/bin:/usr/local/bin /usr/local/bin && "
            f"mount --bind {t}/run /var/run && "
            f'exec {self.shell} "$0" "$1"'
        )
        env = {
            "PATH": "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin",
            "HOME": "/",
            "JETPACK_STANDIN_LOG": str(self.log),
            "JETPACK_STANDIN_STOP_SECONDS": str(stop_seconds),
            "STANDIN_DAEMON_LOG": str(t / "daemon.log"),
            "STANDIN_DAEMON_SYSLOG": str(t / "syslog"),
            "JETPACK_STANDIN_DOCTOR": str(t / "doctor.report"),
        }
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup,
             str(SCRIPT), command],
            capture_output=True, text=True, env=env, timeout=60,
        )

    def events(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def pid(self, name: str) -> int:
        return int((self.run / name).read_text().split()[0])

    def daemon_invocations(self) -> list[dict[str, object]]:
        path = self.top / "daemon.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(params=SHELLS)
def freebsd(request: pytest.FixtureRequest, tmp_path: Path, root: None) -> Iterator[FreeBSDLayout]:
    shell = request.param
    require(shutil.which(shell) is not None, f"{shell} (apt-get install {shell})")
    require(shutil.which("unshare") is not None, "unshare (apt-get install util-linux)")
    top = tmp_path / "host"
    for sub in ("etc", "sbin", "bin", "run"):
        (top / sub).mkdir(parents=True)
    shutil.copy(STANDINS / "rc.subr", top / "etc" / "rc.subr")
    for tool, where in (("daemon", "sbin"), ("jetpack", "bin")):
        shutil.copy(STANDINS / tool, top / where / tool)
        (top / where / tool).chmod(0o755)
    (top / "jetpack.conf").write_text("pod.stop-timeout = 1s\n")
    layout = FreeBSDLayout(top, shell)
    yield layout
    # Whatever a failed test left running: by pid, from the files that name them.
    pids = set()
    for pidfile in layout.run.glob("*.pid"):
        try:
            pids.add(int(pidfile.read_text().split()[0]))
        except (ValueError, IndexError):
            pass
    pids |= {int(line.split()[1]) for line in layout.events() if line.startswith("started ")}
    pids |= {int(line.split()[2]) for line in layout.events() if line.startswith("started ")}
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(top).encode() in cmdline or b"daemon: jetpack[" in cmdline:
            os.kill(pid, signal.SIGKILL)


def enabled(layout: FreeBSDLayout, **knobs: str) -> None:
    settings = {"jetpack_enable": "YES", "jetpack_conf": str(layout.top / "jetpack.conf"),
                **knobs}
    layout.rc_conf("".join(f'{k}="{v}"\n' for k, v in settings.items()))


def started(layout: FreeBSDLayout) -> list[list[str]]:
    return [line.split(maxsplit=3) for line in layout.events() if line.startswith("started ")]


def test_start_status_reload_stop(freebsd: FreeBSDLayout) -> None:
    enabled(freebsd, jetpack_flags="--pidfile /var/run/jetpack/supervisor.pid")

    out = freebsd.rc("start")
    assert out.returncode == 0, out.stderr
    assert "Starting jetpack." in out.stdout
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")

    # daemon(8) got the rc.d script's flags, and jetpack_flags went to `jetpack daemon`.
    [invocation] = freebsd.daemon_invocations()
    assert invocation["keep_fds_open"] is False
    assert invocation["syslog"] is True
    assert invocation["syslog_tag"] == "jetpack"
    assert invocation["restart"] is True
    assert invocation["restart_delay"] == 5
    assert invocation["child_pidfile"] == "/var/run/jetpack.pid"
    assert invocation["parent_pidfile"] == "/var/run/jetpack_daemon.pid"
    assert invocation["argv"] == [
        "/usr/local/bin/jetpack", "-c", str(freebsd.top / "jetpack.conf"), "daemon",
        "--pidfile", "/var/run/jetpack/supervisor.pid",
    ]

    # The host was checked first, with the same configuration, and found ready.
    assert freebsd.events()[0] == "doctor " + json.dumps(
        ["-c", str(freebsd.top / "jetpack.conf"), "doctor", "-q"])

    [[_, pid, ppid, argv]] = started(freebsd)
    daemon_pid = freebsd.pid("jetpack_daemon.pid")
    wait_until((freebsd.run / "jetpack.pid").exists, "the supervisor's pid file")
    assert int(pid) == freebsd.pid("jetpack.pid")
    assert int(ppid) == daemon_pid
    assert json.loads(argv)[-3:] == ["daemon", "--pidfile", "/var/run/jetpack/supervisor.pid"]
    wait_until(lambda: b"daemon: jetpack[" in Path(f"/proc/{daemon_pid}/cmdline").read_bytes(),
               "daemon(8)'s process title")

    out = freebsd.rc("status")
    assert out.returncode == 0
    assert out.stdout.strip() == f"jetpack is running as pid {daemon_pid}."

    out = freebsd.rc("start")
    assert out.returncode == 1
    assert f"jetpack already running? (pid={daemon_pid})." in out.stderr

    # reload reaches the supervisor itself; daemon(8) would ignore SIGHUP.
    out = freebsd.rc("reload")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: "HUP" in freebsd.events(), "SIGHUP to reach the supervisor")
    assert alive(int(pid))
    assert alive(daemon_pid)
    assert len(started(freebsd)) == 1

    # The supervisor's output went to syslog under the jetpack tag.
    wait_until((freebsd.top / "syslog").exists, "the supervisor's output in syslog")
    assert "jetpack[" in (freebsd.top / "syslog").read_text()
    assert "supervisor serving" in (freebsd.top / "syslog").read_text()

    # stop returns only once the supervisor has finished its graceful stop (1 s here).
    began = time.monotonic()
    out = freebsd.rc("stop", stop_seconds=1)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - began >= 1
    assert "Stopping jetpack." in out.stdout
    assert f"Waiting for PIDS: {daemon_pid}" in out.stdout
    assert freebsd.events()[-2:] == ["TERM", "exited"]
    assert not alive(int(pid))
    assert not alive(daemon_pid)
    assert not (freebsd.run / "jetpack.pid").exists()
    assert not (freebsd.run / "jetpack_daemon.pid").exists()

    out = freebsd.rc("status")
    assert out.returncode == 1
    assert out.stdout.strip() == "jetpack is not running."
    out = freebsd.rc("stop")
    assert out.returncode == 1
    assert "jetpack not running? (check /var/run/jetpack_daemon.pid)." in out.stderr


@pytest.mark.parametrize("rc_conf", ['jetpack_enable="NO"\n', ""], ids=["NO", "unset"])
def test_disabled_refuses_start_unless_onestart(freebsd: FreeBSDLayout, rc_conf: str) -> None:
    freebsd.rc_conf(rc_conf)
    out = freebsd.rc("start")
    assert out.returncode == 0  # as rc.subr: boot carries on
    assert out.stdout.strip() == (
        "Cannot 'start' jetpack. Set jetpack_enable to YES in /etc/rc.conf or use "
        "'onestart' instead of 'start'."
    )
    assert freebsd.daemon_invocations() == []
    assert list(freebsd.run.iterdir()) == []

    out = freebsd.rc("onestart")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")
    # No jetpack_conf set and no /usr/local/etc/jetpack.conf: built-in defaults, no -c.
    [[_, _, _, argv]] = started(freebsd)
    assert json.loads(argv) == ["daemon"]
    assert freebsd.rc("onestatus").returncode == 0
    assert "Cannot 'status' jetpack" in freebsd.rc("status").stdout

    out = freebsd.rc("onestop")
    assert out.returncode == 0, out.stderr
    assert freebsd.events()[-2:] == ["TERM", "exited"]


def test_supervisor_that_dies_is_restarted(freebsd: FreeBSDLayout) -> None:
    enabled(freebsd, jetpack_restart_delay="1")
    assert freebsd.rc("start").returncode == 0
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")
    daemon_pid = freebsd.pid("jetpack_daemon.pid")
    first = int(started(freebsd)[0][1])

    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(started(freebsd)) == 2, "daemon(8) to restart the supervisor")
    second = int(started(freebsd)[1][1])
    assert int(started(freebsd)[1][2]) == daemon_pid
    wait_until(lambda: freebsd.pid("jetpack.pid") == second, "the new supervisor's pid file")

    # reload follows the new supervisor, not the dead one's pid.
    assert freebsd.rc("reload").returncode == 0
    wait_until(lambda: "HUP" in freebsd.events(), "SIGHUP to reach the new supervisor")

    out = freebsd.rc("stop")
    assert out.returncode == 0, out.stderr
    assert not alive(second)
    assert not alive(daemon_pid)


def test_restart_delay_no_lets_daemon_exit(freebsd: FreeBSDLayout) -> None:
    enabled(freebsd, jetpack_restart_delay="NO")
    assert freebsd.rc("start").returncode == 0
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")
    assert freebsd.daemon_invocations()[0]["restart"] is False
    daemon_pid = freebsd.pid("jetpack_daemon.pid")
    os.kill(int(started(freebsd)[0][1]), signal.SIGUSR2)  # daemon-stop --keep-pods
    wait_until(lambda: not alive(daemon_pid), "daemon(8) to exit with its supervisor")
    assert freebsd.rc("status").returncode == 1
    assert len(started(freebsd)) == 1


@pytest.mark.parametrize(("knob", "message"), [
    ("jetpack_conf", "jetpack_conf: /nonexistent/jetpack.conf does not exist"),
    ("jetpack_cli", "jetpack_cli: /nonexistent/jetpack.conf is not executable"),
    ("jetpack_restart_delay", "is neither seconds nor NO"),
])
def test_bad_knobs_refuse_start(freebsd: FreeBSDLayout, knob: str, message: str) -> None:
    enabled(freebsd, **{knob: "/nonexistent/jetpack.conf"})
    out = freebsd.rc("start")
    assert out.returncode == 1
    assert message in out.stderr
    assert "failed precmd routine for jetpack" in out.stderr
    assert freebsd.daemon_invocations() == []


def test_host_not_ready_refuses_start_with_doctors_report(freebsd: FreeBSDLayout) -> None:
    enabled(freebsd)
    report = ("missing  pf is not loaded (/dev/pf does not exist)\n"
              "           fix: kldload pf\n"
              "           fix: sysrc pf_enable=YES\n")
    (freebsd.top / "doctor.report").write_text(report)
    out = freebsd.rc("start")
    assert out.returncode == 1
    assert report in out.stderr
    assert "the host is not ready for jetpack; fix the above" in out.stderr
    assert "failed precmd routine for jetpack" in out.stderr
    assert freebsd.daemon_invocations() == []
    assert started(freebsd) == []

    # Fixed: the same start goes ahead.
    (freebsd.top / "doctor.report").unlink()
    out = freebsd.rc("start")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")
    assert freebsd.rc("stop").returncode == 0


def test_reload_when_stopped_says_so(freebsd: FreeBSDLayout) -> None:
    enabled(freebsd)
    out = freebsd.rc("reload")
    assert out.returncode == 1
    assert "jetpack is not running." in out.stdout


def test_reload_never_signals_a_stranger(freebsd: FreeBSDLayout) -> None:
    """A supervisor pid file naming a process daemon(8) did not start gets no signal."""
    enabled(freebsd)
    assert freebsd.rc("start").returncode == 0
    wait_until(lambda: started(freebsd) != [], "the supervisor to start")
    wait_until((freebsd.run / "jetpack.pid").exists, "the supervisor's pid file")
    with subprocess.Popen(["sleep", "60"]) as stranger:
        try:
            (freebsd.run / "jetpack.pid").write_text(str(stranger.pid))
            out = freebsd.rc("reload")
            assert out.returncode == 1
            assert "no supervisor runs under daemon(8) pid" in out.stderr
            assert stranger.poll() is None
        finally:
            stranger.kill()
    assert "HUP" not in freebsd.events()
    assert freebsd.rc("stop").returncode == 0


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("script", [SCRIPT, STANDINS / "rc.subr"], ids=["rc.d", "rc.subr"])
def test_scripts_parse(shell: str, script: Path) -> None:
    require(shutil.which(shell) is not None, f"{shell} (apt-get install {shell})")
    out = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_rcorder_header() -> None:
    """The header rcorder(8) reads, and the knobs rc.conf(5) documents."""
    head = SCRIPT.read_text().splitlines()
    assert head[0] == "#!/bin/sh"
    assert "# PROVIDE: jetpack" in head
    requires = next(line for line in head if line.startswith("# REQUIRE:")).split()[2:]
    assert {"LOGIN", "FILESYSTEMS", "NETWORKING"} <= set(requires)
    assert "# KEYWORD: shutdown" in head
    assert os.access(SCRIPT, os.X_OK)
