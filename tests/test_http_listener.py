"""The HTTP listener over real TCP (and TLS) sockets: the token in every form it is accepted
(bearer header, the dashboard's one-time link and its cookie), what is refused and how, the
CSRF guard of cookie sessions, and the refusal of a non-loopback listener without a token."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
import trustme

from jetpack.config import Config, load_config
from jetpack.errors import ConfigError
from jetpack.state.db import StateDB
from jetpack.supervisor.api import Request, core_router
from jetpack.supervisor.events import EventHub
from jetpack.supervisor.server import ServerHandle, serve

from conftest import Jetpack, write_conf

TOKEN = "listener-test-token-0123456789"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jphl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(tmp_path: Path, sockdir: Path, **http: str) -> Config:
    root = tmp_path / "state"
    root.mkdir(exist_ok=True)
    StateDB(root / "jetpack.db", create=True).close()
    conf = write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(root), "supervisor.socket": f"{sockdir}/j.sock",
        "storage.driver": "dir", **http})
    return load_config(conf, environ={})


class Listener:
    """A hub and a server in the test's nursery, with a POST route that counts its calls."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.posts = 0
        self.handle: ServerHandle | None = None

    async def start(self, nursery: trio.Nursery) -> ServerHandle:
        hub = await nursery.start(EventHub(self.config.root / "jetpack.db").run)
        router = core_router(hub)

        async def poke(request: Request) -> Any:
            del request
            self.posts += 1
            return {"poked": self.posts}

        router.add("POST", "/v1/poke", poke)
        self.handle = await nursery.start(partial(serve, self.config, hub, router,
                                                  write_timeout=2.0, graceful_timeout=2.0,
                                                  heartbeat_interval=0.5))
        return self.handle

    @property
    def base(self) -> str:
        assert self.handle is not None
        assert self.handle.tcp_address is not None
        host, port = self.handle.tcp_address
        scheme = "https" if self.config["http.tls-cert"] else "http"
        return f"{scheme}://{host}:{port}"


@pytest.fixture
async def listener(tmp_path: Path, sockdir: Path, nursery: trio.Nursery) -> Listener:
    serving = Listener(make_config(tmp_path, sockdir, **{"http.listen": "127.0.0.1:0",
                                                         "http.token": TOKEN}))
    await serving.start(nursery)
    return serving


async def handshake_status(host: str, port: int, target: str,
                           headers: list[tuple[bytes, bytes]]) -> int:
    """The HTTP status a websocket handshake is answered with (101: accepted)."""
    request = (b"GET " + target.encode() + b" HTTP/1.1\r\nhost: " + f"{host}:{port}".encode()
               + b"\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
               b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n")
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(request)
            answer = b""
            while b"\r\n" not in answer:
                chunk = await stream.receive_some()
                assert chunk, answer
                answer += chunk
    return int(answer.split()[1])


def client(base: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=10, follow_redirects=False, **kwargs)


async def test_listener_serves_the_control_api_to_the_bearer_token_only(
    listener: Listener,
) -> None:
    async with client(listener.base) as http:
        answer = await http.get("/v1/info", headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert answer.json()["pid"] > 0
        for headers in ({}, {"authorization": "Bearer wrong"},
                        {"authorization": f"Basic {TOKEN}"}, {"cookie": "jetpack_token=nope"}):
            refused = await http.get("/v1/info", headers=headers)
            assert refused.status_code == 401, headers
            assert set(refused.json()) == {"error", "hint", "kind"}
            assert refused.headers["www-authenticate"].startswith("Bearer")
        # every path the listener knows, the dashboard's and unknown ones included
        for path in ("/ui/", "/ui/app.js", "/v1/pods", "/metrics", "/nothing"):
            assert (await http.get(path)).status_code == 401, path
        host, port = listener.handle.tcp_address  # type: ignore[union-attr]
        assert await handshake_status(host, port, "/v1/events", []) == 401


async def test_token_link_sets_a_strict_httponly_cookie_and_leaves_the_url(
    listener: Listener,
) -> None:
    assert listener.handle is not None
    assert listener.handle.dashboard_url is not None
    assert listener.handle.dashboard_url == f"{listener.base}/ui/?token={TOKEN}"
    async with client(listener.base) as http:
        assert (await http.get("/ui/?token=wrong")).status_code == 401
        first = await http.get(f"/ui/?token={TOKEN}&tab=events")
        assert first.status_code == 303
        assert first.headers["location"] == "/ui/?tab=events"
        cookie = first.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert cookie.startswith(f"jetpack_token={TOKEN};")
        assert {"httponly", "samesite", "path"} <= attributes
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
        # the cookie alone opens the page, its files and the API from then on
        page = await http.get("/ui/")
        assert page.status_code == 200
        assert b'src="app.js"' in page.content
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert (await http.get("/ui/app.js")).headers["content-type"].startswith(
            "text/javascript")
        assert (await http.get("/ui")).headers["location"] == "/ui/"
        assert (await http.get("/v1/info")).status_code == 200
        host, port = listener.handle.tcp_address  # type: ignore[misc]
        async with trio_websocket.open_websocket(
            host, port, "/v1/events?since=0", use_ssl=False,
            extra_headers=[(b"cookie", f"jetpack_token={TOKEN}".encode()),
                           (b"origin", f"http://{host}:{port}".encode())],
        ) as ws:
            assert json.loads(await ws.get_message())["type"] == "heartbeat"


async def test_attack_cross_site_post_with_the_session_cookie(listener: Listener) -> None:
    """A page on another origin makes the browser post to the listener: the SameSite=Strict
    cookie does not go with it, and where it would (a same-site origin such as another port of
    127.0.0.1, or a browser ignoring SameSite) the missing X-Jetpack-CSRF header refuses it."""
    cookie = {"cookie": f"jetpack_token={TOKEN}"}
    async with client(listener.base) as http:
        for headers in (
            cookie,  # a plain form post
            {**cookie, "content-type": "application/x-www-form-urlencoded"},
            {**cookie, "x-jetpack-csrf": "1", "origin": "http://evil.example"},
        ):
            refused = await http.post("/v1/poke", headers=headers)
            assert refused.status_code == 403, headers
            assert refused.json()["kind"] == "SupervisorError"
        assert listener.posts == 0
        # the dashboard's own requests, and token holders, still get through
        allowed = await http.post("/v1/poke", headers={
            **cookie, "x-jetpack-csrf": "1", "origin": listener.base})
        assert allowed.status_code == 200
        assert (await http.post("/v1/poke", headers={
            "authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert listener.posts == 2


async def test_attack_cross_site_websocket_with_the_session_cookie(listener: Listener) -> None:
    """Cross-site websocket hijacking: a foreign page opens /v1/events with the cookie."""
    assert listener.handle is not None
    assert listener.handle.tcp_address is not None
    host, port = listener.handle.tcp_address
    cookie = (b"cookie", f"jetpack_token={TOKEN}".encode())
    assert await handshake_status(host, port, "/v1/events", [
        cookie, (b"origin", b"http://evil.example")]) == 403
    assert await handshake_status(host, port, "/v1/events", [
        cookie, (b"origin", f"http://{host}:{port}".encode())]) == 101


async def test_tls_listener_with_a_secure_cookie(
    tmp_path: Path, sockdir: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    serving = Listener(make_config(tmp_path, sockdir, **{
        "http.listen": "127.0.0.1:0", "http.token": TOKEN,
        "http.tls-cert": str(tmp_path / "server.pem"),
        "http.tls-key": str(tmp_path / "server.key")}))
    handle = await serving.start(nursery)
    assert serving.base.startswith("https://")
    assert handle.dashboard_url == f"{serving.base}/ui/?token={TOKEN}"
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with client(serving.base, verify=trusted) as https:
        first = await https.get(f"/ui/?token={TOKEN}")
        assert first.status_code == 303
        assert "; Secure" in first.headers["set-cookie"]
        assert (await https.get("/v1/info")).status_code == 200  # by the cookie
        assert (await https.get("/v1/ping", headers={
            "authorization": f"Bearer {TOKEN}"})).json() == {"ok": True}
    async with client(serving.base) as untrusting:  # the system's CAs do not know ours
        with pytest.raises(httpx.ConnectError):
            await untrusting.get("/v1/ping")
    async with client(serving.base.replace("https://", "http://")) as plain:
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on a TLS listener
            await plain.get("/v1/ping", headers={"authorization": f"Bearer {TOKEN}"})


async def test_loopback_listener_without_a_token_gets_a_fresh_one(
    tmp_path: Path, sockdir: Path, nursery: trio.Nursery
) -> None:
    serving = Listener(make_config(tmp_path, sockdir, **{"http.listen": "127.0.0.1:0"}))
    handle = await serving.start(nursery)
    assert handle.dashboard_url is not None
    token = handle.dashboard_url.rpartition("token=")[2]
    assert len(token) >= 32
    async with client(serving.base) as http:
        assert (await http.get("/v1/ping")).status_code == 401
        assert (await http.get("/v1/ping", headers={
            "authorization": f"Bearer {token}"})).status_code == 200


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:8080",
                                    "dashboard.example:8080"])
async def test_non_loopback_listener_without_a_token_is_refused(
    tmp_path: Path, sockdir: Path, listen: str
) -> None:
    config = make_config(tmp_path, sockdir, **{"http.listen": listen})
    with pytest.raises(ConfigError, match=r"http\.token is empty"):
        await serve(config, EventHub(config.root / "jetpack.db"))
    assert await trio.to_thread.run_sync(os.listdir, sockdir) == []


def test_daemon_refuses_a_public_listener_without_a_token(
    jetpack_dir: Jetpack, sockdir: Path
) -> None:
    jetpack_dir("init")
    sock = sockdir / "j.sock"
    before = jetpack_dir("events", "--no-follow", "--json").stdout
    refused = jetpack_dir("-o", f"supervisor.socket={sock}", "-o", "http.listen=0.0.0.0:8080",
                          "daemon", check=False, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("jetpack: http.listen 0.0.0.0:8080 is reachable from other "
                                     "hosts but http.token is empty"), refused.stderr
    assert len(refused.stderr.splitlines()) == 2  # the error and its hint, no traceback
    assert os.listdir(sockdir) == []
    assert jetpack_dir("events", "--no-follow", "--json").stdout == before  # nothing started


def test_dashboard_command_without_a_supervisor(jetpack_dir: Jetpack, sockdir: Path) -> None:
    jetpack_dir("init")
    answer = jetpack_dir("-o", f"supervisor.socket={sockdir}/j.sock", "dashboard", check=False)
    assert answer.returncode == 1
    assert "no supervisor" in answer.stderr
