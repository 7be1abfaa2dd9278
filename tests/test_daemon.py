"""The daemon in-process over its real control socket, with the fake runtime: the API, the lock,
signals (TERM stops pods, USR2 leaves them), and supervisor events."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path

import httpx
import pytest
import trio

from jetpack.cli.client import ControlClient
from jetpack.config import Config
from jetpack.errors import ConflictError, NotFoundError, PodStartError, SupervisorError
from jetpack.keys import load_key
from jetpack.mds.tokens import pod_token
from jetpack.state import StateDB
from jetpack.store.pods import AppRecord, PodOptions, PodRecord, PodStore, new_uuid
from jetpack.supervisor.daemon import Daemon
from jetpack.testing.fake_runtime import Behaviour, FakeRuntime

pytestmark = pytest.mark.usefixtures("api_matches_openapi")


def prepare(config: Config, name: str, restart: str = "never", ip: str | None = None
            ) -> PodRecord:
    db = StateDB.for_root(config.root)
    with db.transaction() as tx:
        tx.execute("INSERT OR IGNORE INTO images (id, name, labels, manifest, size, created,"
                   " storage) VALUES ('sha512-1', 'example.com/app', '{}', '{}', 1, 0, '')")
    manifest = {"apps": [{"name": "app", "image": {"id": "sha512-1"}}]}
    pod = PodRecord(uuid=new_uuid(), name=name, state="prepared", manifest=json.dumps(manifest),
                    options=PodOptions(restart=restart), ip=ip, apps=[AppRecord("app", "sha512-1")])
    with db.transaction() as tx:
        PodStore(db).insert(tx, pod)
    db.close()
    return pod


def client(config: Config) -> ControlClient:
    return ControlClient(config.path("supervisor.socket"))


async def test_socket_is_root_only_and_answers(config: Config, running: Daemon) -> None:
    path = config.path("supervisor.socket")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = await client(config).request("GET", "/v1/info")
    assert info["pid"] == os.getpid()
    # the metadata service runs in the same loop; a host address that is no pod's gets 403
    (address,) = running.mds_addresses  # "http://127.0.0.1:PORT"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{address}/token/acMetadata/v1/pod/uuid")
    assert r.status_code == 403


async def test_start_stop_list_over_the_api(config: Config, running: Daemon) -> None:
    pod = prepare(config, "web", restart="always")
    api = client(config)
    started = await api.request("POST", "/v1/pods/web/start")
    assert started["state"] == "running"
    assert started["apps"][0]["state"] == "running"
    listing = await api.request("GET", "/v1/pods")
    assert [(p["name"], p["state"]) for p in listing] == [("web", "running")]
    with pytest.raises(ConflictError):
        await api.request("POST", f"/v1/pods/{pod.uuid[:8]}/start")
    stopped = await api.request("POST", "/v1/pods/web/stop", params={"grace": "1"})
    assert stopped["state"] == "exited"
    assert stopped["apps"][0]["signal"] == signal.SIGTERM
    with pytest.raises(NotFoundError):
        await api.request("POST", "/v1/pods/nosuch/start")


async def test_a_second_supervisor_is_refused(config: Config, running: Daemon) -> None:
    with pytest.raises(SupervisorError, match="another supervisor is running"):
        await Daemon(config, FakeRuntime(), mds_bind=["127.0.0.1:0"]).run()


async def test_sigterm_stops_pods_and_exits(config: Config) -> None:
    prepare(config, "web", restart="always")
    runtime = FakeRuntime()
    daemon = Daemon(config, runtime, mds_bind=["127.0.0.1:0"])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            await client(config).request("POST", "/v1/pods/web/start")
            os.kill(os.getpid(), signal.SIGTERM)
    assert runtime.running() == []
    assert not config.path("supervisor.socket").exists()
    db = StateDB.for_root(config.root)
    assert PodStore(db).resolve("web").state == "exited"
    types = [e.type for e in db.events_since(0)]
    assert types[0] == "pod.prepared"
    assert types[1] == "supervisor.started"
    assert types[-1] == "supervisor.stopped"


async def test_keep_pods_then_adopt(config: Config) -> None:
    pod = prepare(config, "kept", restart="on-failure")
    runtime = FakeRuntime({"app": [Behaviour()]})
    first = Daemon(config, runtime, mds_bind=["127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await client(config).request("POST", "/v1/pods/kept/start")
        with trio.fail_after(20):
            await client(config).request("POST", "/v1/shutdown", params={"keep_pods": "1"})
    (process,) = runtime.running(pod.uuid)
    second = Daemon(config, runtime, mds_bind=["127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert runtime.running(pod.uuid) == [process]
        assert (await client(config).request("GET", "/v1/pods/kept"))["state"] == "running"
        second.request_stop()
    db = StateDB.for_root(config.root)
    types = [e.type for e in db.events_since(0)]
    assert "pod.adopted" in types
    assert types.count("app.started") == 1  # adopted, never started twice
    assert PodStore(db).get(pod.uuid).state == "exited"


async def test_ready_is_notified_to_systemd(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    try:
        daemon = Daemon(config, FakeRuntime(), mds_bind=["127.0.0.1:0"])
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            assert b"READY=1" in listener.recv(4096)
            daemon.request_stop()
        assert b"STOPPING=1" in listener.recv(4096)
    finally:
        listener.close()


async def test_a_pod_that_cannot_start_is_an_error_answer_and_the_supervisor_goes_on(
    config: Config, running: Daemon
) -> None:
    prepare(config, "broken")
    prepare(config, "fine")
    runtime = running.runtime
    assert isinstance(runtime, FakeRuntime)
    runtime.fail_sandbox = RuntimeError("no namespaces left")
    reason = "sandbox: RuntimeError: no namespaces left"
    with pytest.raises(PodStartError) as raised:
        await client(config).request("POST", "/v1/pods/broken/start")
    assert str(raised.value) == f"pod broken failed to start: {reason}"
    transport = httpx.AsyncHTTPTransport(uds=str(config.path("supervisor.socket")))
    async with httpx.AsyncClient(transport=transport, base_url="http://jetpack") as http:
        answer = await http.post("/v1/pods/broken/restart")
    assert answer.status_code == 500
    assert answer.json() == {"error": f"pod broken failed to start: {reason}", "hint": None,
                             "kind": "PodStartError"}
    runtime.fail_sandbox = False
    assert (await client(config).request("POST", "/v1/pods/fine/start"))["state"] == "running"
    pods = {p["name"]: p["state"] for p in await client(config).request("GET", "/v1/pods")}
    assert pods == {"broken": "failed", "fine": "running"}


@pytest.fixture
def db_use(running: Daemon, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every use of the supervisor's own database connection, as "thread: limiter" lines;
    the loop thread or a thread outside the manager's limiter is a bug."""
    assert running.manager is not None
    manager = running.manager
    uses: list[str] = []

    def check(db: StateDB, what: str) -> None:
        if db is manager.reader:  # the commands' lookups: its own connection and limiter
            limiter, what = manager._read_limiter, f"read {what}"
        elif db is manager.db:
            limiter = manager.db_limiter
        else:
            return  # the event hub's own connections
        try:
            trio.lowlevel.current_trio_token()
            where = "loop thread"
        except RuntimeError:
            where = "worker thread"
        held = "limiter held" if limiter.borrowed_tokens == 1 else "limiter free"
        uses.append(f"{what} in {where}: {held}")

    query, transaction = StateDB.query, StateDB.transaction

    def guarded_query(self: StateDB, *args: object) -> object:
        check(self, f"query {args[0]}")
        return query(self, *args)  # type: ignore[arg-type]  # passed through

    def guarded_transaction(self: StateDB) -> object:
        check(self, "transaction")
        return transaction(self)

    monkeypatch.setattr(StateDB, "query", guarded_query)
    monkeypatch.setattr(StateDB, "transaction", guarded_transaction)
    return uses


async def test_the_database_is_used_off_the_loop_under_one_limiter(
    config: Config, running: Daemon, db_use: list[str]
) -> None:
    pod = prepare(config, "meta", restart="always", ip="127.0.0.1")
    api = client(config)
    await api.request("POST", "/v1/pods/meta/start")
    await api.request("GET", "/v1/pods")
    await api.request("GET", "/v1/pods/meta")
    token = pod_token(load_key(config, "mds.token-key"), pod.uuid)
    (address,) = running.mds_addresses
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{address}/{token}/acMetadata/v1/apps/app/image/id")
    assert (answer.status_code, answer.text) == (200, "sha512-1")
    await api.request("POST", "/v1/pods/meta/stop", params={"grace": "1"})
    assert [use for use in db_use if "FROM images" in use]  # the MDS read the image
    assert [use for use in db_use if "FROM pods ORDER BY" in use]  # the API listed the pods
    assert [use for use in db_use if use.startswith("read query SELECT uuid FROM pods WHERE name")]
    assert {use for use in db_use if not use.endswith("in worker thread: limiter held")} == set()


async def test_a_pod_lookup_does_not_wait_for_a_write_transaction_in_progress(
    config: Config, running: Daemon
) -> None:
    """The pod commands resolve and read pods on their own read-only connection: a write
    transaction the supervisor holds open (a pod's exit record) delays none of them, and they
    see every commit made before they began and nothing uncommitted."""
    prepare(config, "web", restart="always")
    prepare(config, "idle")
    manager = running.manager
    assert manager is not None
    api = client(config)
    assert (await api.request("POST", "/v1/pods/web/start"))["state"] == "running"
    holding, release = threading.Event(), threading.Event()

    class Undo(Exception):
        pass

    def hold() -> None:
        try:
            with manager.db.transaction() as tx:
                tx.execute("UPDATE pods SET name = 'renamed' WHERE name = 'web'")
                holding.set()
                release.wait(10)
                raise Undo  # rolled back: nothing of it was ever committed
        except Undo:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.in_db_thread, hold)
        assert await trio.to_thread.run_sync(holding.wait, 10)
        try:
            with trio.fail_after(5):  # the old single limiter: queued until ``release``
                shown = await api.request("GET", "/v1/pods/web")
                with pytest.raises(NotFoundError):
                    await api.request("GET", "/v1/pods/renamed")
                waited = await api.request("GET", "/v1/pods/idle/wait")  # resolve, then get
        finally:
            release.set()
    assert (shown["state"], waited["state"]) == ("running", "prepared")
    stopped = await api.request("POST", "/v1/pods/web/stop", params={"grace": "1"})
    assert stopped["state"] == "exited"
