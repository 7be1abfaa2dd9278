"""The live stream end to end over real sockets: the hub, the control server on a unix socket
and the TCP listener, the CLI follower, and a client written with another library."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio
import trio_websocket

from jetpack.cli.client import ControlClient, EventStream, StreamClosed
from jetpack.config import Config, load_config
from jetpack.errors import ConfigError, NotFoundError, SupervisorError, UsageError
from jetpack.events import EventFilter, Retention, trim_events
from jetpack.state.db import WAKE_NAME, StateDB
from jetpack.supervisor.api import Request, core_router
from jetpack.supervisor.events import EventHub
from jetpack.supervisor.server import ServerHandle, serve

REPO = Path(__file__).resolve().parent.parent
POD = "0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a90"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for sockets (a unix socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="jpev", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(tmp_path: Path, sockdir: Path) -> Config:
    root = tmp_path / "state"
    root.mkdir()
    StateDB(root / "jetpack.db", create=True).close()
    conf = tmp_path / "jetpack.conf"
    conf.write_text(f"root.path = {root}\nsupervisor.socket = {sockdir}/j.sock\n"
                    "storage.driver = dir\n")
    return load_config(conf)


@pytest.fixture
def db(config: Config) -> Iterator[StateDB]:
    state = StateDB(config.root / "jetpack.db")
    yield state
    state.close()


@dataclass
class Supervisor:
    """A hub and a server in the test's nursery, restartable."""

    config: Config
    nursery: trio.Nursery
    hub: EventHub | None = None
    handle: ServerHandle | None = None
    scope: trio.CancelScope | None = None

    async def start(self, **kwargs: Any) -> ServerHandle:
        hub_options = {k: kwargs.pop(k) for k in ("queue_size", "poll_interval")
                       if k in kwargs}
        kwargs.setdefault("write_timeout", 2.0)
        kwargs.setdefault("graceful_timeout", 2.0)
        kwargs.setdefault("heartbeat_interval", 0.5)
        self.scope = trio.CancelScope()
        ready: trio.Event = trio.Event()

        async def run() -> None:
            assert self.scope is not None
            with self.scope:
                async with trio.open_nursery() as inner:
                    self.hub = await inner.start(
                        EventHub(self.config.root / "jetpack.db", **hub_options).run)
                    self.handle = await inner.start(partial(serve, self.config, self.hub,
                                                            **kwargs))
                    ready.set()

        self.nursery.start_soon(run)
        await ready.wait()
        assert self.handle is not None
        return self.handle

    def kill(self) -> None:
        """Stop at once, as a crash would (no graceful close of the streams)."""
        assert self.scope is not None
        self.scope.cancel()

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.config.path("supervisor.socket"))


@pytest.fixture
async def supervisor(config: Config, nursery: trio.Nursery) -> Supervisor:
    return Supervisor(config, nursery)


async def append(db: StateDB, count: int, type_: str = "pod.started", *, notify: EventHub |
                 None = None, **fields: Any) -> list[str]:
    """Append ``count`` events, one transaction each; their wire forms."""

    def write() -> list[str]:
        texts = []
        for i in range(count):
            with db.transaction() as tx:
                texts.append(tx.event(type_, pod=POD, pod_name="web", n=i, **fields).to_json())
        return texts

    texts = await trio.to_thread.run_sync(write)
    if notify is not None:
        notify.notify()
    return texts


async def collect(stream: EventStream, count: int) -> list[str]:
    """The next ``count`` events (heartbeats skipped)."""
    texts: list[str] = []
    while len(texts) < count:
        text = await stream.receive()
        if json.loads(text)["type"] != "heartbeat":
            texts.append(text)
    return texts


async def close_at_exit(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` when the surrounding nursery is cancelled."""
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for state owned by another task or process (callers bound it with fail_after)."""
    while not condition():  # noqa: ASYNC110  # polling outside state: sockets, counters
        await trio.sleep(0.01)


async def read_all(ws: trio_websocket.WebSocketConnection, seqs_seen: list[int]) -> None:
    """Read events into ``seqs_seen`` until the connection closes (which raises)."""
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] != "heartbeat":
            seqs_seen.append(message["seq"])


def seqs(texts: list[str]) -> list[int]:
    return [json.loads(t)["seq"] for t in texts]


# --------------------------------------------------------------------------- replay + live


async def test_replay_then_live_in_order(supervisor: Supervisor, db: StateDB) -> None:
    stored = await append(db, 30)
    await supervisor.start()
    hub = supervisor.hub
    assert hub is not None
    with trio.fail_after(10):
        async with supervisor.client.open_events(0) as stream:
            assert await collect(stream, 30) == stored  # exactly Event.to_json()
            live = await append(db, 20, "app.exited", notify=hub, exit_status=0)
            assert await collect(stream, 20) == live
        async with supervisor.client.open_events(25) as stream:
            assert seqs(await collect(stream, 5)) == [26, 27, 28, 29, 30]


async def test_filters_on_the_wire(supervisor: Supervisor, db: StateDB) -> None:
    await supervisor.start()
    hub = supervisor.hub
    assert hub is not None
    other = "7d2e9c41-1111-4a53-9f3e-2f1f6d8b7a91"

    def write() -> None:
        for type_, pod, app in [("pod.started", POD, None), ("app.started", POD, "nginx"),
                                ("pod.started", other, None), ("app.exited", other, "nginx"),
                                ("image.imported", None, None), ("app.exited", POD, "nginx")]:
            with db.transaction() as tx:
                tx.event(type_, pod=pod, pod_name="web" if pod == POD else "db", app=app)

    with trio.fail_after(10):
        async with supervisor.client.open_events(
            0, EventFilter(pods=("web", other[:8]), types=("app.",), apps=("nginx",))
        ) as filtered, supervisor.client.open_events(
            None, EventFilter(types=("pod", "image.imported"))
        ) as live_only:
            await live_only.receive()  # its first heartbeat: subscribed from here on
            await trio.to_thread.run_sync(write)
            hub.notify()
            assert seqs(await collect(filtered, 3)) == [2, 4, 6]
            assert seqs(await collect(live_only, 3)) == [1, 3, 5]


async def test_heartbeats_are_bookmarks_never_ahead_of_the_replay(
    supervisor: Supervisor, db: StateDB
) -> None:
    await append(db, 1500)
    await supervisor.start(heartbeat_interval=0.001)
    hub = supervisor.hub
    assert hub is not None
    with trio.fail_after(20):
        async with supervisor.client.open_events(0) as stream:
            last_event = 0
            last_mark = 0
            heartbeats = 0
            while last_event < 1500:
                message = json.loads(await stream.receive())
                if message["type"] == "heartbeat":
                    assert set(message) == {"type", "last_seq"}
                    assert last_mark <= message["last_seq"] <= last_event
                    last_mark = message["last_seq"]
                    heartbeats += 1
                else:
                    assert message["seq"] == last_event + 1
                    last_event = message["seq"]
            assert heartbeats > 3
        # A filter that matches nothing still advances the bookmark once live.
        async with supervisor.client.open_events(0, EventFilter(types=("nothing",))) as stream:
            while json.loads(await stream.receive())["last_seq"] < 1500:
                pass
            await append(db, 2, notify=hub)
            while json.loads(await stream.receive())["last_seq"] < 1502:
                pass


async def test_since_older_than_retention_is_closed_4410(
    supervisor: Supervisor, db: StateDB
) -> None:
    await append(db, 20)
    await trio.to_thread.run_sync(partial(trim_events, db, Retention(count=5, age=3600)))
    await supervisor.start()
    with trio.fail_after(10):
        for since in (3, 99):
            async with supervisor.client.open_events(since) as stream:
                with pytest.raises(StreamClosed) as closed:
                    await stream.receive()
            assert closed.value.code == 4410
            assert "re-list" in closed.value.reason
            assert "since=20" in closed.value.reason
        async with supervisor.client.open_events(15) as stream:
            assert seqs(await collect(stream, 5)) == [16, 17, 18, 19, 20]
        async with supervisor.client.open_events("bogus") as stream:
            with pytest.raises(StreamClosed) as closed:
                await stream.receive()
        assert closed.value.code == 4400


# --------------------------------------------------------------------------- resume


async def test_reconnecting_with_since_gets_every_event_exactly_once(
    supervisor: Supervisor, db: StateDB
) -> None:
    await supervisor.start()
    hub = supervisor.hub
    assert hub is not None
    total = 400
    received: list[int] = []

    async def writer() -> None:
        for _ in range(total // 10):
            await append(db, 10, notify=hub)
            await trio.sleep(0.005)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            while len(received) < total:
                # read a few, then drop the connection mid-stream (no close handshake)
                stream_socket = await trio.open_unix_socket(str(supervisor.client.socket_path))
                async with trio.open_nursery() as conn:
                    since = received[-1] if received else 0
                    ws = await trio_websocket.wrap_client_stream(
                        conn, stream_socket, "localhost", f"/v1/events?since={since}")
                    for _ in range(37):
                        message = json.loads(await ws.get_message())
                        if message["type"] != "heartbeat":
                            received.append(message["seq"])
                        if len(received) == total:
                            break
                    await stream_socket.aclose()
                    conn.cancel_scope.cancel()
    assert received == list(range(1, total + 1))


async def test_events_appended_by_another_process_are_delivered(
    supervisor: Supervisor, config: Config
) -> None:
    await supervisor.start(poll_interval=0.1)
    with trio.fail_after(20):
        async with supervisor.client.open_events(None) as stream:
            await stream.receive()  # the first heartbeat: subscribed
            await write_from_another_process(
                config, 25, "tx.event('image.imported', image='sha512-' + '0' * 128, n=i)")
            texts = await collect(stream, 25)
    assert seqs(texts) == list(range(1, 26))
    assert {json.loads(t)["type"] for t in texts} == {"image.imported"}


async def test_another_process_commit_wakes_the_hub_at_once(
    supervisor: Supervisor, config: Config
) -> None:
    # The poll would take an hour: only the writer's wake-up can deliver within the deadline.
    await supervisor.start(poll_interval=3600)
    with trio.fail_after(10):
        async with supervisor.client.open_events(None) as stream:
            await stream.receive()  # the first heartbeat: subscribed
            await write_from_another_process(config, 5, "tx.event('pod.prepared', n=i)",
                                             pause=0.05)
            texts = await collect(stream, 5)
    assert seqs(texts) == list(range(1, 6))
    # Only root may nudge the hub (the state root is root-only too).
    assert stat.S_IMODE((config.root / WAKE_NAME).stat().st_mode) == 0o600


async def test_cli_follower_survives_restarts_exactly_once(
    supervisor: Supervisor, db: StateDB, config: Config, tmp_path: Path
) -> None:
    await supervisor.start()
    assert supervisor.hub is not None
    expected = await append(db, 10)
    with (tmp_path / "follower.err").open("wb") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "jetpack.cli.main", "-c", str(config.source), "events",
             "--json", "--since", "0"],
            stdout=-1, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""

    async def read_until(count: int) -> None:
        nonlocal buffer
        assert process.stdout is not None
        while len(lines) < count:
            chunk = await process.stdout.receive_some(65536)
            assert chunk, "the follower exited: " + (tmp_path / "follower.err").read_text()
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)

    try:
        with trio.fail_after(60):
            await read_until(10)
            supervisor.handle.shutdown()  # type: ignore[union-attr]  # started above
            expected += await append(db, 10)  # while no supervisor runs
            await supervisor.start()
            expected += await append(db, 10, notify=supervisor.hub)
            await read_until(30)
            supervisor.kill()  # as kill -9 would: no close frame
            expected += await append(db, 5)
            await supervisor.start()
            expected += await append(db, 5, notify=supervisor.hub)
            await read_until(40)
            await trio.sleep(0.3)  # nothing more may come (no duplicates)
            assert buffer == b""
    finally:
        process.kill()
        await process.wait()
    assert lines == expected
    assert "reconnecting" in (tmp_path / "follower.err").read_text()


# --------------------------------------------------------------------------- slow consumers


async def test_a_reader_that_stops_is_dropped_without_slowing_others(
    supervisor: Supervisor, db: StateDB
) -> None:
    queue_size = 128  # the stalled reader overflows it; busy healthy readers stay within
    await supervisor.start(queue_size=queue_size, write_timeout=1.0)
    hub = supervisor.hub
    assert hub is not None
    padding = "x" * 4000  # fills socket buffers quickly
    total = 600
    fast_counts = [0, 0, 0]
    high_water = 0

    async def fast_reader(index: int, ready: trio.Event) -> None:
        async with supervisor.client.open_events(None) as stream:
            await stream.receive()
            ready.set()
            while fast_counts[index] < total:
                await collect(stream, 1)
                fast_counts[index] += 1

    async def watch_queues() -> None:
        nonlocal high_water
        while True:
            for subscription in list(hub._subscriptions):
                high_water = max(high_water, len(subscription._queue))
            await trio.sleep(0.005)

    with trio.fail_after(30):
        async with trio.open_nursery() as stalled_nursery:
            # The stalled reader: trio-websocket stops reading its socket once one message
            # waits unread.
            stalled_socket = await trio.open_unix_socket(str(supervisor.client.socket_path))
            stalled_nursery.start_soon(close_at_exit, stalled_socket)
            stalled = await trio_websocket.wrap_client_stream(
                stalled_nursery, stalled_socket, "localhost", "/v1/events",
                message_queue_size=1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_queues)
                for index in range(3):
                    ready = trio.Event()
                    nursery.start_soon(fast_reader, index, ready)
                    await ready.wait()
                assert hub.subscriber_count == 4
                start = trio.current_time()
                for _ in range(total // 20):
                    await append(db, 20, notify=hub, padding=padding)
                    await trio.sleep(0.02)
                await eventually(lambda: min(fast_counts) >= total)
                elapsed = trio.current_time() - start
                # the stalled one was dropped, the fast ones left
                await eventually(lambda: hub.subscriber_count == 0)
                nursery.cancel_scope.cancel()
            assert elapsed < 15
            assert high_water <= queue_size
            # What the stalled reader finds once it reads again: a prefix, then the end.
            got: list[int] = []
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await read_all(stalled, got)
            stalled_nursery.cancel_scope.cancel()
    assert got == list(range(1, len(got) + 1))
    assert len(got) < total
    assert closed.value.reason is not None
    assert closed.value.reason.code in (4408, 1006)


async def test_graceful_shutdown_is_not_held_up_by_a_stalled_reader(
    supervisor: Supervisor, db: StateDB, config: Config
) -> None:
    handle = await supervisor.start(write_timeout=1.0, graceful_timeout=5.0)
    hub = supervisor.hub
    assert hub is not None
    stalled_socket = await trio.open_unix_socket(str(handle.socket_path))
    async with stalled_socket, trio.open_nursery() as nursery:
        await trio_websocket.wrap_client_stream(nursery, stalled_socket, "localhost",
                                                "/v1/events", message_queue_size=1)
        await append(db, 200, notify=hub, padding="x" * 4000)
        await trio.sleep(0.5)
        with trio.fail_after(4):
            handle.shutdown()
            await eventually(lambda: not handle.socket_path.exists())
            await eventually(lambda: hub.subscriber_count == 0)
        nursery.cancel_scope.cancel()
    del config


# --------------------------------------------------------------------------- the server


async def test_socket_appears_only_when_serving_with_its_mode(
    supervisor: Supervisor, config: Config, sockdir: Path
) -> None:
    path = config.path("supervisor.socket")
    assert not path.exists()
    handle = await supervisor.start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert os.listdir(sockdir) == ["j.sock"]  # no temporary left behind
    assert (await supervisor.client.request("GET", "/v1/ping")) == {"ok": True}
    info = await supervisor.client.request("GET", "/v1/info")
    assert info["pid"] == os.getpid()
    assert info["version"]
    with pytest.raises(SupervisorError, match="already serving"):
        await serve(config, supervisor.hub)  # type: ignore[arg-type]  # started
    handle.shutdown()
    with trio.fail_after(5):
        await eventually(lambda: not path.exists())
    with pytest.raises(SupervisorError, match="no supervisor is running") as caught:
        await supervisor.client.request("GET", "/v1/ping")
    assert "jetpack daemon" in (caught.value.hint or "")


async def test_group_socket_and_stale_socket(
    supervisor: Supervisor, config: Config
) -> None:
    import grp

    path = config.path("supervisor.socket")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a dead supervisor's leftover: replaced, not refused
    config.values["supervisor.group"] = grp.getgrgid(1).gr_name
    await supervisor.start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert path.stat().st_gid == 1
    assert (await supervisor.client.request("GET", "/v1/ping")) == {"ok": True}


async def test_router_is_extensible_and_errors_keep_their_class(
    supervisor: Supervisor, config: Config, nursery: trio.Nursery
) -> None:
    hub = EventHub(config.root / "jetpack.db")
    await nursery.start(hub.run)
    router = core_router(hub)

    @router.route("GET", "/v1/pods/{pod}")
    async def show_pod(request: Request) -> Any:
        if request.params["pod"] != "web":
            raise NotFoundError(f"no pod {request.params['pod']!r}", hint="see 'jetpack list'")
        return {"name": "web", "verbose": request.arg("verbose")}

    await nursery.start(serve, config, hub, router)
    client = supervisor.client
    assert await client.request("GET", "/v1/pods/web", params={"verbose": "1"}) == {
        "name": "web", "verbose": "1"}
    with pytest.raises(NotFoundError, match="no pod 'db'") as caught:
        await client.request("GET", "/v1/pods/db")
    assert caught.value.hint == "see 'jetpack list'"
    with pytest.raises(UsageError, match="accepts GET"):  # HTTP 405
        await client.request("POST", "/v1/pods/web")
    with pytest.raises(NotFoundError, match="no API endpoint"):
        await client.request("GET", "/v2/nothing")
    assert await trio.to_thread.run_sync(client.request_sync, "GET", "/v1/ping") == {"ok": True}
    with pytest.raises(ValueError, match="already registered"):
        router.add("GET", "/v1/ping", show_pod)


async def test_tcp_listener_requires_the_token(
    supervisor: Supervisor, config: Config, db: StateDB
) -> None:
    # events.listen / events.token are the old names of http.listen / http.token
    config = load_config(overrides=["events.listen=0.0.0.0:0"], environ={},
                         path=config.source)
    with pytest.raises(ConfigError, match=r"http\.token"):
        await serve(config, EventHub(config.root / "jetpack.db"))
    config = load_config(overrides=["events.listen=127.0.0.1:0", "events.token=s3cret-token"],
                         environ={}, path=config.source)
    supervisor.config = config
    handle = await supervisor.start()
    assert handle.tcp_address is not None
    host, port = handle.tcp_address
    await append(db, 3)
    with trio.fail_after(10):
        assert (await http_over_tcp(host, port, "/v1/events", upgrade=True)).startswith(
            b"HTTP/1.1 401")
        async with trio_websocket.open_websocket(
            host, port, "/v1/events?since=0", use_ssl=False,
            extra_headers=[(b"authorization", b"Bearer s3cret-token")],
        ) as ws:
            got = []
            while len(got) < 3:
                message = json.loads(await ws.get_message())
                if message["type"] != "heartbeat":
                    got.append(message["seq"])
            assert got == [1, 2, 3]
        # the whole control API is served on TCP, to the token only
        assert (await http_over_tcp(host, port, "/v1/info")).startswith(b"HTTP/1.1 401")
        async with trio_websocket.open_websocket(
            host, port, "/v1/events?since=0&token=s3cret-token", use_ssl=False,
        ) as ws:  # ?token= on the handshake, for clients that cannot set headers
            assert json.loads(await ws.get_message())["type"] == "heartbeat"


async def http_over_tcp(host: str, port: int, target: str, *, upgrade: bool = False) -> bytes:
    """A raw HTTP/1.1 request (a websocket upgrade with ``upgrade``); the whole answer."""
    extra = (b"upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\n"
             b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if upgrade else (
             b"connection: close\r\n")
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(b"GET " + target.encode() + b" HTTP/1.1\r\nhost: x\r\n" + extra
                              + b"\r\n")
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
            if upgrade and b"\r\n\r\n" in answer:
                break
        return answer


# --------------------------------------------------------------------------- other clients


def docs_example() -> str:
    text = (REPO / "docs" / "events.md").read_text()
    section = text.split("## A client in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 10
    return code.group(1)


async def test_the_documented_websockets_client_receives_the_same_events(
    supervisor: Supervisor, db: StateDB, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(docs_example())
    handle = await supervisor.start()
    stored = await append(db, 5)
    out, err = tmp_path / "client.out", tmp_path / "client.err"
    with trio.fail_after(30), out.open("wb") as stdout, err.open("wb") as stderr:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(
                trio.run_process,
                [sys.executable, str(script), str(handle.socket_path), "2"],
                stdout=stdout, stderr=stderr, check=False,
            ))
            async with supervisor.client.open_events(None) as stream:
                await stream.receive()
                hub = supervisor.hub
                assert hub is not None
                # the example client has connected (its interpreter may start slowly)
                await eventually(lambda: hub.subscriber_count == 2)
                stored += await append(db, 3, notify=supervisor.hub)
                await collect(stream, 3)
            # ... and has printed everything from seq 3 on, before the server closes
            await eventually(lambda: len(out.read_text().splitlines()) >= len(stored) - 2)
            handle.shutdown()  # close 1001: the example's loop ends normally
    assert process.returncode == 0, err.read_text()
    assert out.read_text().splitlines() == stored[2:]


async def test_emitted_messages_match_the_schema(supervisor: Supervisor, db: StateDB) -> None:
    schema = json.loads((REPO / "docs" / "events.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    def write() -> None:
        with db.transaction() as tx:
            tx.event("image.imported", image="sha512-" + "ab" * 64)
            tx.event("pod.prepared", pod=POD, pod_name="web")
            tx.event("app.exited", pod=POD, pod_name="web", app="nginx", exit_status=1)
            tx.event("app.exited", pod=POD, pod_name="web", app="nginx", signal=9)
            tx.event("app.restarting", pod=POD, pod_name="web", app="nginx", attempt=2,
                     delay=0.2)
            tx.event("supervisor.started", pid=1)

    await trio.to_thread.run_sync(write)
    await supervisor.start()
    messages: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with supervisor.client.open_events(0) as stream:
            while len([m for m in messages if m["type"] != "heartbeat"]) < 6:
                messages.append(json.loads(await stream.receive()))
    assert messages[0]["type"] == "heartbeat"
    for message in messages:
        validator.validate(message)
    broken = {"seq": 1, "time": "2026-01-01T00:00:00.000000Z", "type": "app.exited",
              "pod": POD}
    assert not validator.is_valid(broken)  # no exit_status nor signal
    assert not validator.is_valid({"type": "heartbeat", "last_seq": 1, "seq": 2})


async def write_from_another_process(config: Config, count: int, event: str,
                                     pause: float = 0.0) -> None:
    """``count`` transactions, each running ``event`` (with ``i`` and ``tx`` bound), committed
    by another process through the state database, as a CLI command does."""
    script = (
        "import sys, time\n"
        "from jetpack.state.db import StateDB\n"
        "db = StateDB(__import__('pathlib').Path(sys.argv[1]))\n"
        f"for i in range({count}):\n"
        "    with db.transaction() as tx:\n"
        f"        {event}\n"
        f"    time.sleep({pause})\n"
    )
    await trio.run_process([sys.executable, "-c", script, str(config.root / "jetpack.db")],
                           env={**os.environ, "PYTHONPATH": str(REPO)})
