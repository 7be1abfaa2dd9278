"""Containment of what runs in a pod, from the attacker's side: capabilities of non-root apps,
the default seccomp filter, exec/console/build confinement and sessions (issue 15, items 3, 5,
8 and 12). Every attack runs inside a real pod with the defaults a user gets."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from jetpack.stage1.capabilities import CAPABILITIES, DEFAULT_CAPABILITIES

from acis import aci_from_entries, dir_entry, link_entry, manifest, manifest_entry
from conftest import REPO
from podhost import Host, run_sh

DEFAULT_MASK = sum(1 << CAPABILITIES[name] for name in DEFAULT_CAPABILITIES)
STATUS_FIELDS = "grep -E \"^(CapEff|CapPrm|CapAmb|CapBnd|Seccomp|NoNewPrivs):\" /proc/self/status"


def status_of(text: str) -> dict[str, str]:
    """The /proc/self/status fields STATUS_FIELDS printed, by name."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in ("CapEff", "CapPrm", "CapAmb", "CapBnd", "Seccomp", "NoNewPrivs"):
            fields[name] = value.strip()
    return fields


def layer(host: Host, name: str, app: dict[str, object], *entries: object) -> str:
    """Import an image on top of example.com/busybox running ``app``; its name."""
    aci = aci_from_entries(host.tmp / f"{name.replace('/', '_')}.aci", [
        manifest_entry(manifest(name, dependencies=[{"imageName": "example.com/busybox"}],
                                app=app)),
        dir_entry("rootfs"), *entries])  # type: ignore[list-item]  # acis' Entry tuples
    host.jp("import", str(aci))
    return name


def python_image(host: Host) -> str:
    """busybox plus the host's /usr as a read-only volume: a python in the pod, to make the
    raw system calls busybox has no applet for (TIOCSTI, io_uring, keyctl, personality)."""
    return layer(host, "example.com/pyprobe", {"exec": ["/hostusr/bin/python3", "-V"],
                                                "user": "0", "group": "0"},
                 dir_entry("rootfs/hostusr"), link_entry("rootfs/lib", "hostusr/lib"),
                 link_entry("rootfs/lib64", "hostusr/lib64"))


def run_python(host: Host, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.jp("run", "--rm", "-v", "hostusr,kind=host,source=/usr,readOnly=true",
                   python_image(host), "-m", "hostusr:/hostusr", "--exec",
                   f"/hostusr/bin/python3 -I -S -c '{code}'", *extra, check=False)


# --- item 3: non-root apps hold no capability ----------------------------------------------

def test_attack_non_root_app_becomes_root_through_its_capabilities(host: Host) -> None:
    host.start()
    script = (f"id -u; {STATUS_FIELDS}; "
              "nsenter -S 0 -G 0 -- id -u && echo BECAME-ROOT; "
              "nsenter -S 0 -G 0 -- sh -c \"echo 63 > /proc/sys/net/ipv4/ip_default_ttl\" "
              "&& echo SYSCTL-WRITTEN; "
              "unshare -U -r id -u && echo USER-NAMESPACE; true")
    out = run_sh(host, script, "--user", "1234", "--group", "1234")
    status = status_of(out.stdout)
    assert out.stdout.splitlines()[0] == "1234", out.stdout  # it still runs, as itself
    assert (status["CapEff"], status["CapPrm"], status["CapAmb"]) == ("0" * 16,) * 3, out.stdout
    # the bounding set keeps appc's 14, so a setuid-root binary of the image works as usual
    assert int(status["CapBnd"], 16) == DEFAULT_MASK
    assert "BECAME-ROOT" not in out.stdout
    assert "SYSCTL-WRITTEN" not in out.stdout
    assert "USER-NAMESPACE" not in out.stdout


def test_attack_root_app_loses_nothing_it_needs(host: Host) -> None:
    """The legitimate side: root keeps appc's 14 (ping through CAP_NET_RAW)."""
    host.start()
    gateway = host.network.split("/")[0]
    out = run_sh(host, f"{STATUS_FIELDS}; ping -c1 -W5 {gateway} >/dev/null && echo PING-OK")
    status = status_of(out.stdout)
    assert int(status["CapEff"], 16) == DEFAULT_MASK, out.stdout
    assert status["Seccomp"] == "2"
    assert "PING-OK" in out.stdout


def test_attack_retain_set_gives_a_non_root_app_exactly_what_it_asks(host: Host) -> None:
    host.start()
    gateway = host.network.split("/")[0]
    image = layer(host, "example.com/pinger", {
        "exec": ["/bin/sh", "-c", f"{STATUS_FIELDS}; ping -c1 -W5 {gateway} >/dev/null && "
                 "echo PING-OK; nsenter -S 0 -- id -u && echo BECAME-ROOT; true"],
        "user": "1234", "group": "1234",
        "isolators": [{"name": "os/linux/capabilities-retain-set",
                       "value": {"set": ["CAP_NET_RAW"]}}]})
    out = host.jp("run", "--rm", image)
    status = status_of(out.stdout)
    wanted = f"{1 << CAPABILITIES['CAP_NET_RAW']:016x}"
    assert (status["CapEff"], status["CapPrm"], status["CapAmb"], status["CapBnd"]) == \
        (wanted,) * 4, out.stdout
    assert "PING-OK" in out.stdout
    assert "BECAME-ROOT" not in out.stdout


# --- item 12: the default seccomp filter -----------------------------------------------------

def test_attack_pod_root_makes_namespaces_and_mounts(host: Host) -> None:
    host.start()
    out = run_sh(host, "unshare -U -r -m sh -c \"mount -t tmpfs x /mnt && echo MOUNTED\"; "
                       "unshare -U true && echo USER-NAMESPACE; "
                       "unshare -n true && echo NET-NAMESPACE; "
                       "mount -t tmpfs y /mnt && echo ROOT-MOUNTED; "
                       "adjtimex -f 0 >/dev/null 2>&1 && echo CLOCK-SET; "
                       "sh -c \"echo forked\"; true")
    for success in ("MOUNTED", "USER-NAMESPACE", "NET-NAMESPACE", "ROOT-MOUNTED", "CLOCK-SET"):
        assert success not in out.stdout, out.stdout
    assert "forked" in out.stdout  # plain fork/clone still work


RAW_CALLS = (
    "import ctypes, errno, os, threading, subprocess;"
    "libc = ctypes.CDLL(None, use_errno=True);"
    "call = lambda *a: (libc.syscall(*[ctypes.c_long(x) for x in a]), ctypes.get_errno());"
    "print(\"io_uring\", call(425, 1, 0));"
    "print(\"keyctl\", call(250, 0, -3, 0));"
    "print(\"add_key\", call(248, 0, 0, 0, 0, -2));"
    "print(\"clone-newuser\", call(56, 0x10000000 | 17, 0, 0, 0, 0));"
    "print(\"clone3\", call(435, 0, 0));"
    "print(\"personality-aslr-off\", call(135, 0x0040000));"
    "print(\"personality-query\", call(135, 0xffffffff));"
    "print(\"userfaultfd\", call(323, 0));"
    "t = threading.Thread(target=print, args=(\"thread-ok\",)); t.start(); t.join();"
    "print(subprocess.run([\"/bin/echo\", \"spawn-ok\"], capture_output=True, text=True).stdout)"
)


def test_attack_kernel_surface_io_uring_keyrings_clone_flags(host: Host) -> None:
    host.start()
    out = run_python(host, RAW_CALLS)
    assert out.returncode == 0, (out.stdout, out.stderr)
    results = {}
    for line in out.stdout.splitlines():
        name, _, rest = line.partition(" ")
        results[name] = rest
    eperm, enosys = f"(-1, {1})", f"(-1, {38})"
    for name in ("io_uring", "keyctl", "add_key", "clone-newuser", "personality-aslr-off",
                 "userfaultfd"):
        assert results[name] == eperm, out.stdout
    assert results["clone3"] == enosys  # libc falls back to clone
    assert results["personality-query"].startswith("(0,")
    assert "thread-ok" in out.stdout
    assert "spawn-ok" in out.stdout


def test_attack_calls_an_image_isolator_blocks_with_its_own_errno(host: Host) -> None:
    """The filter is compiled once and loaded by one prctl before exec: a pod whose image
    blocks mkdir with EXDEV gets exactly that filter, the default set included (mount fails
    with the image's errno too), from the app's first instruction; what it allows works."""
    host.start()
    image = layer(host, "example.com/nomkdir", {
        "exec": ["/bin/sh", "-c", f"{STATUS_FIELDS}; mkdir /made && echo MADE; "
                 "mount -t tmpfs x /mnt && echo MOUNTED; "
                 "touch /touched && echo TOUCHED; true"],
        "user": "0", "group": "0",
        "isolators": [{"name": "os/linux/seccomp-remove-set",
                       "value": {"set": ["mkdir", "mkdirat"], "errno": "EXDEV"}}]})
    out = host.jp("run", "--rm", image)
    status = status_of(out.stdout)
    assert status["Seccomp"] == "2", out.stdout
    assert status["NoNewPrivs"] == "0"  # not forced on the app
    assert int(status["CapEff"], 16) == DEFAULT_MASK  # CAP_SYS_ADMIN went at exec
    assert "MADE" not in out.stdout
    assert "MOUNTED" not in out.stdout
    assert out.stdout.count("Invalid cross-device link") == 2, out.stdout  # EXDEV, both
    assert "TOUCHED" in out.stdout


# --- item 5: exec, console and build get the app's confinement -------------------------------

def test_attack_exec_runs_unconfined(host: Host) -> None:
    host.start()
    pod = host.jp("prepare", "--name", "target", "example.com/busybox", "--exec",
                  "/bin/sh -c 'grep -E \"^(CapEff|Seccomp|NoNewPrivs):\" /proc/self/status "
                  "> /tmp/app-status; sleep 300'").stdout.split()[-1]
    host.jp("start", pod)
    host.wait_for("the app", lambda: host.jp("exec", "target", "--", "/bin/cat",
                                            "/tmp/app-status", check=False).returncode == 0)
    app = status_of(host.jp("exec", "target", "--", "/bin/cat", "/tmp/app-status").stdout)
    out = host.jp("exec", "target", "--", "/bin/sh", "-c",
                  f"{STATUS_FIELDS}; cat /proc/self/cgroup; "
                  "unshare -U true && echo USER-NAMESPACE; true")
    status = status_of(out.stdout)
    assert status["CapEff"] == app["CapEff"] == f"{DEFAULT_MASK:016x}", out.stdout
    assert status["Seccomp"] == app["Seccomp"] == "2"
    assert status["NoNewPrivs"] == app["NoNewPrivs"]
    assert f"jetpack/{pod}" in out.stdout  # the pod's cgroup
    assert "USER-NAMESPACE" not in out.stdout
    # a non-root app's exec is as powerless as the app
    user_pod = host.jp("prepare", "--name", "user", "example.com/busybox", "--user", "1234",
                       "--group", "1234", "--exec", "/bin/sleep 300").stdout.split()[-1]
    host.jp("start", user_pod)
    out = host.jp("exec", "user", "--", "/bin/sh", "-c", STATUS_FIELDS)
    assert status_of(out.stdout)["CapEff"] == "0" * 16, out.stdout
    host.jp("stop", user_pod)
    host.jp("stop", pod)


def read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    """Terminal output up to ``marker``, answering busybox's cursor-position queries."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; got {seen[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        assert chunk, f"the terminal closed before {marker!r}; got {seen[-400:]!r}"
        seen += chunk
        if b"\x1b[6n" in chunk:
            os.write(fd, b"\x1b[1;1R")
    return seen


INJECTOR = """import fcntl, termios, time
time.sleep(1)
try:
    for c in b"echo INJECTED\\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
finally:
    open("/tmp/injected", "w").write("done")
"""


def test_attack_console_injects_keystrokes_into_the_admins_terminal(host: Host) -> None:
    host.start()
    pod = host.jp("prepare", "--name", "con", "-v", "hostusr,kind=host,source=/usr,"
                  "readOnly=true", python_image(host), "-m", "hostusr:/hostusr", "--exec",
                  "/bin/sleep 300").stdout.split()[-1]
    host.jp("start", pod)
    master, slave = os.openpty()  # the admin's terminal
    admin_dev = os.fstat(slave).st_dev
    admin_input = os.dup(slave)  # where keystrokes pushed into the admin's terminal land
    cli = [sys.executable, "-m", "jetpack.cli.main", "-c", str(host.jp.conf), "console", "con"]
    proc = subprocess.Popen(cli, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    try:
        read_until(master, b"# ")
        os.write(master, b"tty; stat -L -c DEV=%d /proc/self/fd/0 /proc/self/fd/2; "
                         b"stat -c PTS=%d /dev/pts/ptmx; echo MARK-$((2*3))\r")
        seen = read_until(master, b"MARK-6")
        # the attack: a process left behind pushes a command into its terminal once the
        # admin is back in their own shell
        os.write(master, b"cat > /tmp/inject.py <<'EOF'\r")
        for line in INJECTOR.splitlines():
            os.write(master, line.encode() + b"\r")
        os.write(master, b"EOF\rsetsid /hostusr/bin/python3 -I -S /tmp/inject.py & exit\r")
        assert proc.wait(timeout=30) == 0
        host.wait_for("the injector", lambda: host.jp(
            "exec", "con", "--", "/bin/cat", "/tmp/injected", check=False).returncode == 0)
        os.set_blocking(admin_input, False)
        try:
            pushed = os.read(admin_input, 4096)
        except BlockingIOError:
            pushed = b""
    finally:
        os.close(master)
        os.close(admin_input)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"INJECTED" not in pushed, "TIOCSTI in the pod reached the admin's terminal"
    text = seen.decode(errors="replace")
    devices = {line.split("=", 1)[1].strip() for line in text.splitlines()
               if line.startswith(("DEV=", "PTS="))}
    # the shell's terminal is a pty of the pod's own devpts, not the admin's
    assert len(devices) == 1, text
    assert str(admin_dev) not in devices
    assert "/dev/pts/" in text
    host.jp("stop", pod)


# --- item 8: every app in its own session ----------------------------------------------------

def test_attack_kill_0_from_a_terminal_pod_reaches_the_supervisor(host: Host) -> None:
    host.start()
    assert host.daemon is not None
    master, slave = os.openpty()
    cli = [sys.executable, "-m", "jetpack.cli.main", "-c", str(host.jp.conf), "run", "-t",
           "--name", "killer", "example.com/busybox", "--exec",
           "/bin/sh -c 'sleep 1; kill -9 0; echo survived'"]
    proc = subprocess.Popen(cli, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    try:
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    assert host.daemon.poll() is None, "kill 0 in the pod killed the supervisor"
    assert code == 128 + signal.SIGKILL  # the app's own session died
    assert host.pod("killer")["state"] == "exited"


def test_run_t_shell_has_job_control(host: Host) -> None:
    """The legitimate side of sessions: the pty is the app session's controlling terminal."""
    host.start()
    master, slave = os.openpty()
    cli = [sys.executable, "-m", "jetpack.cli.main", "-c", str(host.jp.conf), "run", "-t",
           "--rm", "example.com/busybox", "--exec", "/bin/sh"]
    proc = subprocess.Popen(cli, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    try:
        seen = read_until(master, b"# ")
        os.write(master, b"sleep 100 &\r")
        read_until(master, b"# ")
        os.write(master, b"jobs; echo JOBS-$((1+1))\r")
        seen += read_until(master, b"JOBS-2")
        os.write(master, b"kill %1; exit 0\r")
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
    text = seen.decode(errors="replace")
    assert "job control turned off" not in text, text
    assert "sleep 100" in text.split("JOBS-2")[0].split("jobs;")[-1], text


def test_attack_build_command_runs_unconfined(host: Host, tmp_path: Path) -> None:
    build_dir = tmp_path / "ctx"
    build_dir.mkdir()
    host.jp("build", "example.com/busybox", str(build_dir), "/bin/sh", "-c",
            f"{STATUS_FIELDS} > /build-status; cat /proc/self/cgroup > /build-cgroup; "
            "unshare -U true && echo USER-NAMESPACE > /build-userns; "
            "echo \'{\"name\": \"example.com/built\"}\' > manifest.json")
    host.start()
    shown = host.jp("run", "--rm", "example.com/built", "--exec",
                    "/bin/sh -c 'cat /build-status /build-cgroup /build-userns 2>/dev/null; "
                    "true'").stdout
    status = status_of(shown)
    assert int(status["CapEff"], 16) == DEFAULT_MASK, shown
    assert status["Seccomp"] == "2"
    assert any(line.split(":")[1] == "pids" and "/jetpack/" in line
               for line in shown.splitlines() if line.count(":") >= 2), shown
    assert "USER-NAMESPACE" not in shown
