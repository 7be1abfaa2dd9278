"""appc meta discovery against the conformance scenarios (tests/data/appc: the reference
implementation's discovery tests), served by an httpx MockTransport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetpack.discovery import Discovery, Endpoint, covers, meta_tags, render_template
from jetpack.errors import FetchError

DATA = Path(__file__).parent / "data" / "appc"
CASES = json.loads((DATA / "derived" / "discovery-vectors.json").read_text())["cases"]


def transport(case: dict[str, Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host != "example.com" or request.url.scheme != "https":
            return httpx.Response(404)
        page = case["served"].get(request.url.path.rstrip("/"))
        if page is None or request.url.params.get("ac-discovery") != "1":
            return httpx.Response(404)
        expected = (case.get("host_headers") or {}).get("example.com", {})
        for key, values in expected.items():
            if request.headers.get(key) != ", ".join(values):
                return httpx.Response(401)
        return httpx.Response(200, text=(DATA / "discovery" / "testdata" / page).read_text())
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("case", CASES, ids=[c["desc"] for c in CASES])
@pytest.mark.parametrize("insecure", [False, True])
async def test_discovery_vectors(case: dict[str, Any], insecure: bool) -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=transport(case, seen)) as http:
        discovery = Discovery(http, insecure_http=insecure, host_headers=case.get("host_headers"))
        if case["aci_endpoints"] is None:
            with pytest.raises(FetchError, match=case["name"]):
                await discovery.endpoints(case["name"], case["labels"])
        else:
            found = await discovery.endpoints(case["name"], case["labels"])
            assert found == [Endpoint(e["ACI"], e["ASC"]) for e in case["aci_endpoints"]]
        if case["pubkeys"] is None:
            with pytest.raises(FetchError):
                await discovery.pubkeys(case["name"])
        else:
            assert await discovery.pubkeys(case["name"]) == case["pubkeys"]
    assert all(r.url.params.get("ac-discovery") == "1" for r in seen)
    assert seen[0].url.host == "example.com"


def test_prefixes_cover_whole_segments() -> None:
    assert covers("example.com/foo", "example.com/foo")
    assert covers("example.com/foo", "example.com/foo/bar")
    assert covers("example.com/foo/", "example.com/foo/bar")
    assert not covers("example.com/foo", "example.com/foobar")
    assert not covers("example.com/foo/bar", "example.com/foo")


def test_templates() -> None:
    labels = {"version": "1.0.0", "os": "linux", "arch": "amd64", "name": "ignored"}
    assert render_template("https://h/{name}-{version}-{os}-{arch}.{ext}", "a/b", labels,
                           "aci") == "https://h/a/b-1.0.0-linux-amd64.aci"
    assert render_template("https://h/{name}-{flavor}.{ext}", "a", labels, "aci") is None
    assert render_template("https://h/{name}-{version}.{ext}", "a", {}, "aci.asc") == \
        "https://h/a-latest.aci.asc"


def test_hostile_html_gives_no_tags() -> None:
    assert meta_tags("<meta name='ac-discovery' content='one-word'>") == []
    assert meta_tags("<<<>>>&#xffffffff;<meta") == []
    assert meta_tags('<META NAME="ac-discovery" CONTENT="a https://x/{name}.{ext}">') == [
        ("ac-discovery", "a", "https://x/{name}.{ext}")]
