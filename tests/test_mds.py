"""The metadata service over real HTTP on loopback: endpoints, content types, identity, limits.

Pod A is 127.0.0.1, pod B 127.0.0.2; 127.0.0.3 is a host address that belongs to no pod.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from jetpack.mds.service import (
    AppMetadata,
    MetadataService,
    PodMetadata,
    PodRateLimit,
    StaticDirectory,
    serve,
)
from jetpack.mds.tokens import pod_token, sign

SIGNING_KEY = bytes(range(32))
TOKEN_KEY = bytes(range(32, 64))


def make_pod(name: str) -> PodMetadata:
    pod_uuid = str(uuid.uuid4())
    manifest = json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [
        {"name": name, "image": {"name": f"example.com/{name}", "id": "sha512-" + "a" * 128}}]})
    return PodMetadata(
        uuid=pod_uuid, token=pod_token(TOKEN_KEY, pod_uuid), manifest=manifest,
        annotations=[{"name": "ip-address", "value": "10.1.2.3"}],
        apps={name: AppMetadata(
            image_id="sha512-" + "a" * 128,
            image_manifest=json.dumps({"acKind": "ImageManifest", "name": f"example.com/{name}"}),
            annotations=[{"name": "authors", "value": "jetpack"}],
        )},
    )


@dataclass
class Running:
    base: str
    a: PodMetadata
    b: PodMetadata

    def url(self, pod: PodMetadata, path: str, token: str | None = None) -> str:
        return f"{self.base}/{pod.token if token is None else token}/acMetadata/v1/{path}"


def client(source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source),
                             timeout=10)


@pytest.fixture
async def mds(nursery: trio.Nursery) -> AsyncIterator[Running]:
    directory = StaticDirectory()
    a, b = make_pod("alpha"), make_pod("beta")
    directory.by_address.update({"127.0.0.1": a, "127.0.0.2": b})
    shutdown = trio.Event()
    bound = await nursery.start(
        lambda task_status: serve(MetadataService(directory, SIGNING_KEY), ["0.0.0.0:0"],
                                  shutdown=shutdown, task_status=task_status))
    port = bound[0].rsplit(":", 1)[1]
    yield Running(f"http://127.0.0.1:{port}", a, b)
    shutdown.set()


async def test_pod_endpoints_and_content_types(mds: Running) -> None:
    async with client("127.0.0.1") as http:
        r = await http.get(mds.url(mds.a, "pod/uuid"))
        assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; charset=us-ascii")
        assert r.text == mds.a.uuid  # no trailing newline
        r = await http.get(mds.url(mds.a, "pod/manifest"))
        assert r.headers["content-type"] == "application/json"
        assert r.json()["apps"][0]["name"] == "alpha"
        r = await http.get(mds.url(mds.a, "pod/annotations"),
                           headers={"Metadata-Flavor": "AppContainer"})
        assert r.json() == [{"name": "ip-address", "value": "10.1.2.3"}]
        r = await http.get(mds.url(mds.a, "apps/alpha/image/id"))
        assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; charset=us-ascii")
        assert r.text == "sha512-" + "a" * 128
        r = await http.get(mds.url(mds.a, "apps/alpha/image/manifest"))
        assert r.headers["content-type"] == "application/json"
        assert r.json()["name"] == "example.com/alpha"
        r = await http.get(mds.url(mds.a, "apps/alpha/annotations"))
        assert r.json() == [{"name": "authors", "value": "jetpack"}]
        assert (await http.get(mds.url(mds.a, "apps/nosuch/image/id"))).status_code == 404
        assert (await http.post(mds.url(mds.a, "pod/uuid"))).status_code == 405


async def test_sign_in_a_verify_in_b(mds: Running) -> None:
    async with client("127.0.0.1") as a_http, client("127.0.0.2") as b_http:
        r = await a_http.post(mds.url(mds.a, "pod/hmac/sign"), data={"content": "hello"})
        assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; charset=us-ascii")
        signature = r.text
        assert signature == sign(SIGNING_KEY, mds.a.uuid, b"hello")
        form = {"content": "hello", "uuid": mds.a.uuid, "signature": signature}
        r = await b_http.post(mds.url(mds.b, "pod/hmac/verify"), data=form)
        assert r.status_code == 200
        tampered = dict(form, content="hellp")
        assert (await b_http.post(mds.url(mds.b, "pod/hmac/verify"), data=tampered)
                ).status_code == 403
        bad_sig = dict(form, signature=signature[:-4] + "AAA=")
        assert (await b_http.post(mds.url(mds.b, "pod/hmac/verify"), data=bad_sig)
                ).status_code == 403
        other_pod = dict(form, uuid=mds.b.uuid)
        assert (await b_http.post(mds.url(mds.b, "pod/hmac/verify"), data=other_pod)
                ).status_code == 403
        r = await b_http.post(mds.url(mds.b, "pod/hmac/verify"), data={"content": "x"})
        assert r.status_code == 400


async def test_identity_is_enforced(mds: Running) -> None:
    async with client("127.0.0.2") as b_http, client("127.0.0.3") as host_http:
        # B knows A's token: still 403, because B's address is not A's
        r = await b_http.get(mds.url(mds.a, "pod/uuid"))
        assert r.status_code == 403
        assert "token" in r.text
        # no token at all
        r = await b_http.get(f"{mds.base}/acMetadata/v1/pod/uuid")
        assert r.status_code == 403
        # a host address that belongs to no pod, even with a valid token
        r = await host_http.get(mds.url(mds.a, "pod/uuid"))
        assert r.status_code == 403
        assert "running pod" in r.text
        # B with its own token gets its own uuid, never A's
        assert (await b_http.get(mds.url(mds.b, "pod/uuid"))).text == mds.b.uuid


async def test_huge_body_is_refused_and_loop_stays_responsive(mds: Running) -> None:
    host, port = mds.base.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    size = 1024 * 1024
    await stream.send_all(b"POST /" + mds.a.token.encode() + b"/acMetadata/v1/pod/hmac/sign "
                          b"HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
                          b"urlencoded\r\nContent-Length: " + str(size).encode() +
                          b"\r\n\r\ncontent=")
    response = bytearray()

    async def read_response() -> None:
        # Read while the body is still being sent: the answer comes before the body ends, and
        # the connection is reset once the server closes with unread data.
        with contextlib.suppress(trio.BrokenResourceError):
            while b"\r\n" not in response:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                response.extend(chunk)
        nursery.cancel_scope.cancel()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_response)
            with contextlib.suppress(trio.BrokenResourceError):
                for _ in range(size // 4096):
                    await stream.send_all(b"x" * 4096)
            await trio.sleep_forever()
    assert response.startswith(b"HTTP/1.1 413"), response[:100]
    await stream.aclose()
    async with client("127.0.0.1") as http:
        assert (await http.get(mds.url(mds.a, "pod/uuid"))).status_code == 200


async def test_slowloris_does_not_stall_others(mds: Running) -> None:
    host, port = mds.base.removeprefix("http://").split(":")
    slow = await trio.open_tcp_stream(host, int(port))
    await slow.send_all(b"POST /" + mds.a.token.encode() + b"/acMetadata/v1/pod/hmac/sign "
                        b"HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ncontent=")
    with trio.fail_after(5):
        async with client("127.0.0.1") as http:
            for _ in range(20):
                assert (await http.get(mds.url(mds.a, "pod/uuid"))).status_code == 200
    with trio.fail_after(15):  # the trickling client is cut off by the body timeout
        data = await slow.receive_some(4096)
        assert data == b"" or b"413" in data
    await slow.aclose()


async def test_rate_limit_spaces_a_pods_requests_under_a_virtual_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst is admitted at once, then one request per interval; a request whose turn is
    more than max_delay away is refused at once; another pod has its own budget."""
    limit = PodRateLimit(rate=10, burst=3, max_delay=0.5)
    admitted: list[float] = []
    refused: list[float] = []

    async def ask(pod: str) -> None:
        (admitted if await limit.admit(pod) else refused).append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(ask, "a")
    assert admitted == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert refused == [0, 0, 0, 0]
    start = trio.current_time()
    await ask("b")
    assert admitted[-1] == start  # b's budget is whole
    await trio.sleep(10)
    now = trio.current_time()
    for _ in range(3):
        await ask("a")  # a's budget filled up again while it was quiet
    assert admitted[-3:] == [now, now, now]


async def test_attack_a_pod_flooding_the_mds_does_not_starve_another(
    nursery: trio.Nursery,
) -> None:
    directory = StaticDirectory()
    a, b = make_pod("alpha"), make_pod("beta")
    directory.by_address.update({"127.0.0.1": a, "127.0.0.2": b})
    shutdown = trio.Event()
    service = MetadataService(directory, SIGNING_KEY, PodRateLimit(rate=10, burst=5,
                                                                   max_delay=1.0))
    bound = await nursery.start(
        lambda task_status: serve(service, ["0.0.0.0:0"], shutdown=shutdown,
                                  task_status=task_status))
    running = Running(f"http://127.0.0.1:{bound[0].rsplit(':', 1)[1]}", a, b)
    statuses: list[int] = []
    try:
        async with client("127.0.0.1") as flood, client("127.0.0.2") as other:

            async def hammer() -> None:
                for _ in range(10):
                    answer = await flood.get(running.url(a, "pod/uuid"))
                    statuses.append(answer.status_code)

            flood_began = trio.current_time()
            async with trio.open_nursery() as attackers:
                for _ in range(20):
                    attackers.start_soon(hammer)
                await trio.sleep(0.5)  # the flood is on
                began = trio.current_time()
                answer = await other.get(running.url(b, "pod/uuid"))
                assert answer.status_code == 200
                assert answer.text == b.uuid
                assert trio.current_time() - began < 1.0  # b is not queued behind a
            flood_took = trio.current_time() - flood_began
    finally:
        shutdown.set()
    # the flooding pod was slowed and refused, never served beyond its budget
    assert statuses.count(429) > 0
    assert set(statuses) == {200, 429}
    assert statuses.count(200) <= 5 + 10 * flood_took + 1  # its burst, then its rate
