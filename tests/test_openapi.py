"""``/v1/openapi.json``: a valid OpenAPI 3.1 document, served on the control socket, that
describes every route the daemon registers (enumerated from its router, never listed here) and
every answer the API tests see (tests/openapi_check.py, used by this module too)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from jetpack.config import Config
from jetpack.supervisor.daemon import Daemon
from jetpack.supervisor.openapi import DOCUMENT

from openapi_check import Mismatch, check

pytestmark = pytest.mark.usefixtures("api_matches_openapi")

ROOT = Path(__file__).resolve().parent.parent


def http(config: Config) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(config.path("supervisor.socket")))
    return httpx.AsyncClient(transport=transport, base_url="http://jetpack")


async def test_the_served_document_is_valid_openapi(config: Config, running: Daemon) -> None:
    async with http(config) as client:
        answer = await client.get("/v1/openapi.json")
    assert answer.status_code == 200
    served = answer.json()
    validate(served)  # openapi-spec-validator: raises on any violation
    assert served == json.loads(json.dumps(DOCUMENT))
    assert served["openapi"].startswith("3.1")


async def test_every_route_of_the_daemon_is_documented(config: Config, running: Daemon) -> None:
    assert running.server is not None
    endpoints = running.server.app.router.endpoints()
    # the router really is the daemon's: the pod routes, metrics and this document are in it
    assert ("POST", "/v1/pods/{pod}/start") in endpoints
    assert ("GET", "/metrics") in endpoints
    assert ("GET", "/v1/openapi.json") in endpoints
    missing = []
    for method, template in [*endpoints, ("WEBSOCKET", "/v1/events")]:
        item = DOCUMENT["paths"].get(template, {})
        operation = item.get("get" if method == "WEBSOCKET" else method.lower())
        if operation is None or (method == "WEBSOCKET") != bool(operation.get("x-websocket")):
            missing.append(f"{method} {template}")
            continue
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(template.replace("}", "{").split("{")[1::2]), template
    assert missing == []


def test_the_error_object_is_documented_for_every_operation() -> None:
    for template, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if operation.get("x-websocket") or template in ("/ui",):
                continue
            for status in ("400", "404", "500"):
                assert operation["responses"][status] == {
                    "$ref": f"#/components/responses/{_error_name(status)}"}, \
                    (method, template, status)
    error = DOCUMENT["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "hint", "kind"]


def _error_name(status: str) -> str:
    return {"400": "BadRequest", "404": "NotFound", "500": "ServerError"}[status]


async def test_error_answers_match_the_error_object(config: Config, running: Daemon,
                                                    api_matches_openapi: list[str]) -> None:
    async with http(config) as client:
        assert (await client.get("/v1/pods/nosuch")).status_code == 404
        assert (await client.delete("/v1/pods")).status_code == 405
        assert (await client.post("/v1/pods/nosuch/stop", params={"grace": "x"})
                ).status_code == 400
        assert (await client.get("/metrics")).status_code == 200
    assert api_matches_openapi == ["GET /v1/pods/nosuch 404", "DELETE /v1/pods 405",
                                   "POST /v1/pods/nosuch/stop 400", "GET /metrics 200"]


def test_the_checker_refuses_what_the_document_does_not_say() -> None:
    """The hook can fail: an undocumented status, a wrong body, an unknown path."""
    pod = {"uuid": "0" * 36, "name": "p", "state": "running", "ip": None, "apps": []}
    check("GET", "/v1/pods/p", 200, "application/json", json.dumps(pod).encode())
    with pytest.raises(Mismatch, match="'sleeping' is not one of"):
        check("GET", "/v1/pods/p", 200, "application/json",
              json.dumps({**pod, "state": "sleeping"}).encode())
    with pytest.raises(Mismatch, match="status 418 is not documented"):
        check("GET", "/v1/pods/p", 418, "application/json", b"{}")
    with pytest.raises(Mismatch, match=r"not in the OpenAPI document.*status 200"):
        check("GET", "/v1/nothing", 200, "application/json", b"{}")
    with pytest.raises(Mismatch, match="status 200 is not documented"):
        check("DELETE", "/v1/pods", 200, "application/json", b"[]")
    check("DELETE", "/v1/pods", 405, "application/json",
          b'{"error": "/v1/pods accepts GET", "hint": null, "kind": "UsageError"}')
    with pytest.raises(Mismatch, match="'kind' is a required property"):
        check("GET", "/v1/pods/p", 404, "application/json", b'{"error": "x", "hint": null}')


def test_docs_api_points_to_the_document() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    assert "/v1/openapi.json" in text
    assert "supervisor/openapi.py" in text
