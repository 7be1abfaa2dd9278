"""Every control API answer a test sees must match the OpenAPI document (supervisor/openapi.py).

A test module opts in with ``pytestmark = pytest.mark.usefixtures("api_matches_openapi")`` and
``from openapi_check import api_matches_openapi  # noqa: F401``. The fixture wraps the clients
tests use: ``httpx.AsyncClient.send`` (the CLI client's ``request``, and tests' own httpx
clients with base URL ``http://jetpack``), and the CLI client's synchronous exchange and its
``/run`` stream (each line checked against the stream's schema). An answer that does not match
fails the test at the request, naming method, path, status and the schema's complaint.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator

from jetpack.cli import client as client_module
from jetpack.supervisor.openapi import DOCUMENT

_current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "openapi_request", default=None)


class Mismatch(AssertionError):
    pass


_ERROR_ONLY = {"responses": {
    "404": {"$ref": "#/components/responses/NotFound"},
    "405": {"$ref": "#/components/responses/MethodNotAllowed"}}}
"""What a path or method the document does not have may answer: the error object (404 for an
unknown path, 405 for a known path asked with another method), nothing else."""


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    for template, item in DOCUMENT["paths"].items():
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template, item.get(method.lower(), _ERROR_ONLY)
    return "(not in the OpenAPI document)", _ERROR_ONLY


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = DOCUMENT["components"][section][name]
    return node


def schema_for(method: str, path: str, status: int, content_type: str) -> dict[str, Any]:
    """The schema an answer must match; raises ``Mismatch`` when the document has none."""
    template, operation = _operation(method, path)
    responses = operation["responses"]
    spec = responses.get(str(status)) or responses.get("default")
    if spec is None:
        raise Mismatch(f"{method} {path} ({template}): status {status} is not documented "
                       f"(documented: {sorted(responses)})")
    spec = _resolve(spec)
    media = content_type.split(";", maxsplit=1)[0].strip()
    content = spec.get("content", {})
    if media not in content:
        raise Mismatch(f"{method} {path}: {status} answered {media!r}, documented "
                       f"{sorted(content)}")
    return dict(content[media]["schema"])


def check(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """Raise ``Mismatch`` unless ``body`` is what the document says for this answer."""
    schema = schema_for(method, path, status, content_type)
    media = content_type.split(";", maxsplit=1)[0].strip()
    if media == "application/json":
        validate(json.loads(body), schema, f"{method} {path} {status}")
    elif media == "application/x-ndjson":
        for line in body.splitlines():
            validate(json.loads(line), schema, f"{method} {path} {status} (a line)")
    elif schema.get("type") == "string":
        body.decode()


def validate(instance: Any, schema: dict[str, Any], where: str) -> None:
    root = {**schema, "components": DOCUMENT["components"]}
    errors = sorted(OAS31Validator(root).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise Mismatch(f"{where}: the answer does not match the OpenAPI document: "
                       f"{errors[0].message} at {list(errors[0].path)}; body: "
                       f"{json.dumps(instance)[:500]}")


@pytest.fixture
def api_matches_openapi(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Check every answer; returns the list of ``METHOD path status`` checked (for tests that
    want to know the hook saw something)."""
    seen: list[str] = []
    original_send = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
                   ) -> httpx.Response:
        response = await original_send(self, request, **kwargs)
        if request.url.host == "jetpack" and not kwargs.get("stream"):
            await response.aread()
            check(request.method, request.url.path, response.status_code,
                  response.headers.get("content-type", ""), response.content)
            seen.append(f"{request.method} {request.url.path} {response.status_code}")
        return response

    original_exchange = client_module.ControlClient._exchange
    original_decode = client_module._decode
    original_stream = client_module.ControlClient.stream_sync

    @contextlib.contextmanager
    def exchange(self: Any, method: str, path: str, *args: Any, **kwargs: Any
                 ) -> Iterator[Any]:
        token = _current.set((method, path))
        try:
            with original_exchange(self, method, path, *args, **kwargs) as response:
                yield response
        finally:
            _current.reset(token)

    def decode(status: int, data: bytes) -> Any:
        where = _current.get()
        if where is not None:
            check(where[0], where[1], status, "application/json", data)
            seen.append(f"{where[0]} {where[1]} {status}")
        return original_decode(status, data)

    def stream_sync(self: Any, method: str, path: str, **kwargs: Any
                    ) -> Iterator[dict[str, Any]]:
        schema = schema_for(method, path, 200, "application/x-ndjson")
        for message in original_stream(self, method, path, **kwargs):
            validate(message, schema, f"{method} {path} 200 (a line)")
            seen.append(f"{method} {path} 200 line")
            yield message

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    monkeypatch.setattr(client_module.ControlClient, "_exchange", exchange)
    monkeypatch.setattr(client_module, "_decode", decode)
    monkeypatch.setattr(client_module.ControlClient, "stream_sync", stream_sync)
    return seen
