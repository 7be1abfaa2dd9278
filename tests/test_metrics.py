"""``/metrics``: scraped from a real supervisor while real pods start, restart, exit and stop,
parsed with prometheus-client's own parser; and the FreeBSD usage path against the rctl
stand-in."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from jetpack.cli.unixhttp import UnixHTTPConnection
from jetpack.stage1.base import AppSpec, SandboxSpec
from jetpack.stage1.drivers import pod_usage
from jetpack.stage1.jail import JailDriver
from jetpack.store.pods import POD_STATES

from podhost import Host, run_sh

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

BUSY = ("/bin/sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo warm; "
        "exec sleep 300'")


def scrape(host: Host) -> tuple[Samples, str]:
    connection = UnixHTTPConnection(str(host.tmp / "jp.sock"), 30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        assert response.getheader("content-type", "").startswith("text/plain; version=0.0.4")
    finally:
        connection.close()
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, body


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def scrape_until(host: Host, what: str, check: Callable[[Samples], bool],
                 timeout: float = 30) -> Samples:
    """Scrape until ``check`` holds: the counts follow the event log a moment after the API
    call that caused them returns."""
    deadline = time.monotonic() + timeout
    while True:
        samples, body = scrape(host)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{body}"
        time.sleep(0.1)


def states(samples: Samples) -> dict[str, float | None]:
    return {state: value(samples, "jetpack_pods", state=state) for state in POD_STATES}


def open_event_stream(path: Path) -> socket.socket:
    """A raw websocket handshake on /v1/events, kept open (one subscriber)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: jetpack\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert sock.recv(200).startswith(b"HTTP/1.1 101")
    return sock


def test_metrics_follow_real_pods_through_start_restart_exit_and_stop(host: Host) -> None:
    host.start()
    samples, body = scrape(host)
    # every state is there, at 0, before any pod exists; every counter starts at 0
    assert states(samples) == dict.fromkeys(POD_STATES, 0.0)
    assert value(samples, "jetpack_pod_starts_total") == 0
    assert value(samples, "jetpack_pod_start_seconds_count") == 0
    assert value(samples, "jetpack_app_restarts_total") == 0
    for reason in ("success", "failure", "signal", "unknown"):
        assert value(samples, "jetpack_app_exits_total", reason=reason) == 0
    assert value(samples, "jetpack_event_subscribers") == 0
    assert "# TYPE jetpack_pod_memory_bytes gauge" in body

    # a running pod: starts, the start histogram, state gauges, and its own usage
    busy = host.jp("prepare", "example.com/busybox", "--name", "busy", "--exec",
                   BUSY).stdout.split()[-1]
    samples = scrape_until(host, "the prepared pod", lambda s: value(
        s, "jetpack_pods", state="prepared") == 1)
    host.jp("start", "busy")
    samples = scrape_until(host, "busy running with its usage", lambda s: (
        value(s, "jetpack_pods", state="running") == 1
        and value(s, "jetpack_pod_starts_total") == 1
        and (value(s, "jetpack_pod_cpu_seconds_total", pod=busy, name="busy") or 0) > 0))
    assert states(samples) == {**dict.fromkeys(POD_STATES, 0.0), "running": 1.0}
    assert value(samples, "jetpack_pod_start_seconds_count") == 1
    start_seconds = value(samples, "jetpack_pod_start_seconds_sum")
    assert start_seconds is not None
    assert 0 < start_seconds < 30
    assert value(samples, "jetpack_pod_start_seconds_bucket", le="+Inf") == 1
    memory = value(samples, "jetpack_pod_memory_bytes", pod=busy, name="busy")
    assert memory is not None
    assert memory > 100_000
    # a scrape with a live pod stays cheap (the cgroup reads run in a worker thread)
    began = time.monotonic()
    scrape(host)
    assert time.monotonic() - began < 2.0

    # restarts and failed exits: on-failure:2 runs three times, then the pod fails
    host.jp("prepare", "example.com/busybox", "--name", "flaky", "--restart", "on-failure:2",
            "--exec", "/bin/sh -c 'exit 3'")
    host.jp("start", "flaky", check=False)
    samples = scrape_until(host, "flaky failed", lambda s: value(
        s, "jetpack_pods", state="failed") == 1)
    assert value(samples, "jetpack_app_restarts_total") == 2
    assert value(samples, "jetpack_app_exits_total", reason="failure") == 3
    assert value(samples, "jetpack_pod_starts_total") == 2  # flaky reached running once

    # the metadata service counts its answers by code: a pod's own token, then a wrong one
    run_sh(host, 'wget -qO- "$AC_METADATA_URL/acMetadata/v1/pod/uuid"; '
                 'wget -qO- "${AC_METADATA_URL%/*}/wrong/acMetadata/v1/pod/uuid"; exit 0')
    samples = scrape_until(host, "the mds requests and the --rm pod gone", lambda s: (
        value(s, "jetpack_pods", state="exited") == 0
        and value(s, "jetpack_app_exits_total", reason="success") == 1))
    assert value(samples, "jetpack_mds_requests_total", code="200") == 1
    assert value(samples, "jetpack_mds_requests_total", code="403") == 1

    # an event stream is a subscriber while it is open
    stream = open_event_stream(host.tmp / "jp.sock")
    try:
        scrape_until(host, "one subscriber", lambda s: value(
            s, "jetpack_event_subscribers") == 1)
    finally:
        stream.close()
    scrape_until(host, "no subscriber", lambda s: value(s, "jetpack_event_subscribers") == 0)

    # stopping: the pod leaves the running count and its usage series go
    host.jp("stop", "busy")
    samples = scrape_until(host, "busy stopped", lambda s: value(
        s, "jetpack_pods", state="exited") == 1)
    assert states(samples) == {**dict.fromkeys(POD_STATES, 0.0), "exited": 1.0,
                               "failed": 1.0}
    assert value(samples, "jetpack_pod_memory_bytes", pod=busy, name="busy") is None
    assert value(samples, "jetpack_pod_cpu_seconds_total", pod=busy, name="busy") is None
    exits = sum(value(samples, "jetpack_app_exits_total", reason=r) or 0
                for r in ("success", "failure", "signal", "unknown"))
    assert exits == 5  # flaky 3, the mds pod 1, busy 1
    last = max(json.loads(line)["seq"] for line in
               host.jp("events", "--no-follow", "--json").stdout.splitlines())
    scrape_until(host, "the last seq", lambda s: value(s, "jetpack_events_last_seq") == last)


POD = "0f8e2c1a-5b7d-4e9f-8a6b-000000000021"


@pytest.mark.freebsd
async def test_jail_usage_comes_from_rctl_u(standins: Path, tmp_path: Path,
                                            busybox_rootfs: Path) -> None:
    """FreeBSD: memory and CPU time of the pod jail, whose racct holds its app jails'."""
    driver = JailDriver()
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod"))
    try:
        with trio.fail_after(60):
            process = await driver.start_app(handle, AppSpec("a", busybox_rootfs, (
                "sh", "-c", "i=0; while [ $i -lt 700000 ]; do i=$((i+1)); done; exec sleep 60")))
            usage = await trio.to_thread.run_sync(pod_usage, handle)
            while usage is None or not usage.cpu_seconds:
                await trio.sleep(0.2)
                usage = await trio.to_thread.run_sync(pod_usage, handle)
            assert usage.memory_bytes is not None
            assert usage.memory_bytes > 100_000
            assert usage.cpu_seconds >= 1  # rctl's cputime: whole seconds
            await driver.stop(handle, process, grace=5)
        process.close()
    finally:
        await driver.destroy_sandbox(handle)
    calls = [json.loads(line) for line in (standins / "calls.log").read_text().splitlines()
             if '"rctl"' in line]
    assert {"tool": "rctl", "argv": ["-u", f"jail:jetpack/{POD}"]} in calls
    # a jail rctl cannot report (gone) reads as nothing rather than failing the scrape
    gone = await trio.to_thread.run_sync(pod_usage, handle)
    assert gone is not None
    assert gone.memory_bytes == 0
