"""``jetpack run`` as one supervisor request: ``POST /v1/pods/{pod}/run`` streams the apps'
output while they run, ends with the pod's exit, and with ``rm`` leaves nothing behind; real
pods under a real supervisor (the ``host`` fixture)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from jetpack.cli.client import ControlClient

from conftest import require
from podhost import Host

pytestmark = pytest.mark.usefixtures("api_matches_openapi")

SLOW = "/bin/sh -c 'echo first; sleep 4; echo second; exit 3'"


def pods_on_disk(host: Host) -> list[str]:
    pods = host.jp.root / "pods"
    return sorted(p.name for p in pods.iterdir()) if pods.exists() else []


def test_run_streams_output_before_the_app_exits_and_rm_leaves_nothing(host: Host) -> None:
    host.start()
    proc = subprocess.Popen(host.jp.argv("run", "--rm", "example.com/busybox", "--exec", SLOW),
                            env=host.jp.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        # The first line is here while the app still sleeps: streamed, not printed at the end.
        assert first == b"first\n"
        assert proc.poll() is None
        (running,) = json.loads(host.jp("list", "--json").stdout)
        assert running["state"] == "running"
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b"second\n"
    assert proc.returncode == 3, err
    assert json.loads(host.jp("list", "--json").stdout) == []
    assert pods_on_disk(host) == []
    types = [e["type"] for e in host.events()]
    assert types[-2:] == ["pod.exited", "pod.destroyed"]


def test_run_endpoint_ends_with_the_pods_exit(host: Host) -> None:
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--name", "twice", "--exec",
                  "/bin/sh -c 'echo out; echo err >&2; exit 5'").stdout.split()[-1]
    client = ControlClient(host.tmp / "jp.sock")
    messages: list[dict[str, Any]] = list(client.stream_sync("POST", "/v1/pods/twice/run"))
    output = b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "output")
    assert sorted(output.splitlines()) == [b"err", b"out"]
    assert {m["app"] for m in messages if m["type"] == "output"} == {"busybox"}
    exit_message = messages[-1]
    assert exit_message["type"] == "exit"
    assert exit_message["destroyed"] is False
    assert exit_message["pod"]["uuid"] == pod
    assert exit_message["pod"]["state"] == "exited"
    assert exit_message["pod"]["apps"][0]["exit_status"] == 5
    assert host.pod(pod)["state"] == "exited"  # no rm: the pod stays
    # A second run of the same pod streams only what that run wrote.
    again = host.jp("run", pod, check=False)
    assert again.returncode == 5
    assert sorted(again.stdout.splitlines()) == ["err", "out"]  # not the first run's too


def test_run_rm_client_gone_still_removes_the_pod(host: Host) -> None:
    host.start()
    proc = subprocess.Popen(host.jp.argv("run", "--rm", "example.com/busybox", "--exec",
                                         "/bin/sh -c 'echo up; sleep 60'"),
                            env=host.jp.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    deadline = time.monotonic() + 30
    # destroy removes the row first, then the files (a cut destroy leaves only files gc sees)
    while json.loads(host.jp("list", "--json").stdout) or pods_on_disk(host):
        assert time.monotonic() < deadline, "the interrupted run --rm left its pod"
        time.sleep(0.1)


def test_run_prefixes_each_apps_lines_when_the_pod_has_several(host: Host) -> None:
    """Several apps: every line carries its app's name, whether run prepared the pod from
    images or was given a prepared pod's name (one word, which names no image)."""
    host.start()
    apps = ["example.com/busybox", "--app-name", "one", "--exec", "/bin/echo from-one",
            "example.com/busybox", "--app-name", "two", "--exec", "/bin/echo from-two"]
    out = host.jp("run", "--rm", *apps)
    assert sorted(out.stdout.splitlines()) == ["one| from-one", "two| from-two"]
    host.jp("prepare", *apps, "--name", "duo")
    out = host.jp("run", "--rm", "duo")
    assert sorted(out.stdout.splitlines()) == ["one| from-one", "two| from-two"]
    assert json.loads(host.jp("list", "--json").stdout) == []
    alone = host.jp("run", "--rm", "example.com/busybox", "--exec", "/bin/echo single")
    assert alone.stdout == "single\n"


# A raw HTTP/1.1 request on the control socket, reached through the O_PATH descriptor argv[2]
# (the state root's directories are root's: the socket file's own mode is what is tested),
# standard library only (run with -I -S by an unprivileged uid): prints the status and body.
RAW_REQUEST = r"""
import json, socket, sys
body = sys.argv[1].encode()
s = socket.socket(socket.AF_UNIX)
s.connect(f"/proc/self/fd/{sys.argv[2]}")
s.sendall(b"POST /v1/run?rm=1 HTTP/1.1\r\nHost: jetpack\r\nConnection: close\r\n"
          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
print(answer.decode(errors="replace"))
"""


def test_attack_socket_group_member_runs_a_pod_with_the_host_root_mounted(host: Host) -> None:
    """The socket's group may start and stop pods, not choose their options: a member that
    asks the supervisor to prepare and run a pod with / as a host volume (root in the pod,
    reading the host's /etc/shadow) is refused with 403 and nothing is made; root's own
    run through the same request still works."""
    import grp

    require(shutil.which("curl") is not None, "curl")
    with host.jp.conf.open("a") as conf:
        conf.write(f"supervisor.group = {grp.getgrgid(1).gr_name}\n")
    host.start()
    attack = json.dumps({
        "apps": [{"image": "example.com/busybox", "exec": ["/bin/cat", "/host/etc/shadow"],
                  "mounts": [["hostroot", "/host", False]]}],
        "volumes": [{"name": "hostroot", "kind": "host", "source": "/"}]})
    legit = json.dumps({"apps": [{"image": "example.com/busybox",
                                  "exec": ["/bin/echo", "root ran"]}]})
    path = os.open(host.tmp / "jp.sock", os.O_PATH)
    try:
        # curl, not this interpreter: the member must be able to run it wherever the
        # checkout sits (a clone under a 0700 mktemp directory is out of nobody's reach)
        as_member = subprocess.run(
            ["curl", "-sS", "-i", "--unix-socket", f"/proc/self/fd/{path}",
             "-H", "Content-Type: application/json", "--data-binary", attack,
             "http://jetpack/v1/run?rm=1"], user=65534, group=65534, extra_groups=[1],
            pass_fds=[path], cwd="/", capture_output=True, text=True, timeout=60)
        as_root = subprocess.run(
            [sys.executable, "-I", "-S", "-c", RAW_REQUEST, legit, str(path)],
            pass_fds=[path], capture_output=True, text=True, timeout=60)
    finally:
        os.close(path)
    assert as_member.returncode == 0, as_member.stderr
    assert as_member.stdout.startswith("HTTP/1.1 403"), as_member.stdout
    assert "PermissionDeniedError" in as_member.stdout
    assert "root:" not in as_member.stdout
    assert json.loads(host.jp("list", "--json").stdout) == []
    assert pods_on_disk(host) == []
    # root, the same request: the pod is prepared, runs and goes
    assert as_root.stdout.startswith("HTTP/1.1 200"), as_root.stdout
    assert '"type":"pod"' in as_root.stdout
    assert '"prepared":true' in as_root.stdout
    assert base64.b64encode(b"root ran\n").decode() in as_root.stdout
    assert json.loads(host.jp("list", "--json").stdout) == []
