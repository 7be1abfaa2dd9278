"""The control API's OpenAPI 3.1 document, served at ``GET /v1/openapi.json`` on the control
socket (and on the HTTP listener).

Hand-written, as a Python dict: the API is small and its contracts (docs/api.md, DESIGN.md's
"CLI contract") are the source of truth, not handler signatures. tests/test_openapi.py checks
that the document is valid OpenAPI, that every route the server registers is in it, and
(tests/openapi_check.py) that every answer the API tests receive matches it. Websocket endpoints
are described as the ``GET`` of their handshake, answered ``101``, and marked
``x-websocket: true``; a streamed answer (``application/x-ndjson``) has the schema of one line.
"""

from __future__ import annotations

import copy
from typing import Any

from jetpack import __version__
from jetpack.store.pods import APP_STATES, POD_STATES
from jetpack.supervisor.api import Request, Router

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


_POD_PARAM = {"name": "pod", "in": "path", "required": True,
              "description": "A pod UUID, a unique UUID prefix, or a pod name.",
              "schema": {"type": "string"}}
_GRACE_PARAM = {"name": "grace", "in": "query", "required": False,
                "description": "Seconds between SIGTERM and SIGKILL (default: pod.stop-timeout).",
                "schema": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)?$"}}
_FLAG = {"type": "string", "description": "1, true or yes mean true; anything else false."}
_TEXT_REFUSAL = {"description": "The handshake is refused; the body says why.",
                 "content": {"text/plain": {"schema": {"type": "string"}}}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error answer. kind names the class in jetpack.errors "
                       "(the CLI raises it again).",
        "required": ["error", "hint", "kind"],
        "properties": {
            "error": {"type": "string", "description": "One line for a person."},
            "hint": {"type": ["string", "null"], "description": "What to do about it."},
            "kind": {"type": "string", "enum": [
                "JetpackError", "UsageError", "ConfigError", "ValidationError",
                "NotFoundError", "AmbiguousError", "ConflictError", "ImageError",
                "StorageError", "IsolationError", "NetworkError", "StateError", "TrustError",
                "FetchError", "SupervisorError", "PodStartError"]},
        },
    },
    "App": {
        "type": "object",
        "required": ["name", "image", "state", "exit_status", "signal", "restarts"],
        "properties": {
            "name": {"type": "string"},
            "image": {"type": "string", "description": "The image ID (sha512-...)."},
            "state": {"type": "string", "enum": list(APP_STATES)},
            "exit_status": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]},
            "restarts": {"type": "integer", "minimum": 0},
        },
    },
    "Pod": {
        "type": "object",
        "description": "A pod as jetpack list --json shows it.",
        "required": ["uuid", "name", "state", "ip", "apps"],
        "properties": {
            "uuid": {"type": "string", "pattern": "^[0-9a-f-]{36}$"},
            "name": {"type": "string"},
            "state": {"type": "string", "enum": list(POD_STATES)},
            "ip": {"type": ["string", "null"], "description": "IPv4 address, no prefix."},
            "created": {"type": ["string", "null"], "description": "RFC 3339 UTC."},
            "started": {"type": ["string", "null"]},
            "exited": {"type": ["string", "null"]},
            "boot": {"type": "boolean"},
            "priority": {"type": "integer"},
            "restart": {"type": "string", "description": "never, on-failure[:N] or always."},
            "apps": {"type": "array", "items": _ref("App")},
            "memory_bytes": {"type": ["integer", "null"],
                             "description": "The pod cgroup's memory use while it runs "
                                            "(null otherwise, and on FreeBSD)."},
        },
    },
    "RunMessage": {
        "description": "One line of the stream of POST /v1/pods/{pod}/run and POST /v1/run.",
        "oneOf": [
            {"type": "object", "required": ["type", "uuid", "name", "apps", "prepared",
                                            "warnings"],
             "description": "POST /v1/run only, first: the pod it runs (prepared for it, or "
                            "the pod the word named) and prepare's warnings.",
             "properties": {"type": {"const": "pod"}, "uuid": {"type": "string"},
                            "name": {"type": "string"},
                            "apps": {"type": "array", "items": {"type": "string"}},
                            "prepared": {"type": "boolean"},
                            "warnings": {"type": "array", "items": {"type": "string"}}}},
            {"type": "object", "required": ["type", "app", "data"],
             "properties": {"type": {"const": "output"}, "app": {"type": "string"},
                            "data": {"type": "string", "contentEncoding": "base64"}}},
            {"type": "object", "required": ["type", "pod", "destroyed"],
             "properties": {"type": {"const": "exit"}, "pod": _ref("Pod"),
                            "destroyed": {"type": "boolean"}}},
            {"type": "object", "required": ["type", "error", "hint", "kind"],
             "properties": {"type": {"const": "error"}, "error": {"type": "string"},
                            "hint": {"type": ["string", "null"]},
                            "kind": {"type": "string"}}},
        ],
    },
    "RunRequest": {
        "description": "The command line of jetpack run as JSON (cli/prepare.py parse_words; "
                       "store/prepare.py PrepareRequest.from_json).",
        "type": "object",
        "required": ["apps"],
        "properties": {
            "apps": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["image"],
                "properties": {
                    "image": {"type": "string"}, "name": {"type": "string"},
                    "exec": {"type": "array", "items": {"type": "string"}},
                    "user": {"type": "string"}, "group": {"type": "string"},
                    "working_directory": {"type": "string"},
                    "environment": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                    "mounts": {"type": "array", "items": {
                        "type": "array", "minItems": 3, "maxItems": 3,
                        "description": "[volume, mount point or path or null, read-only]"}},
                }}},
            "name": {"type": "string"},
            "restart": {"type": "string"},
            "ports": {"type": "array", "items": {
                "type": "object", "required": ["name", "host_port"],
                "properties": {"name": {"type": "string"}, "host_port": {"type": "integer"},
                               "host_ip": {"type": "string"}}}},
            "volumes": {"type": "array", "items": {"type": "object",
                                                   "description": "An appc volume."}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "keep_image_etc": {"type": "boolean"},
        },
    },
    "Info": {
        "type": "object",
        "required": ["version", "pid", "events"],
        "properties": {
            "version": {"type": "string"},
            "pid": {"type": "integer"},
            "events": {"type": "object", "required": ["last_seq", "subscribers"],
                       "properties": {"last_seq": {"type": "integer", "minimum": 0},
                                      "subscribers": {"type": "integer", "minimum": 0}}},
        },
    },
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _json(_ref("Error"), "A malformed parameter or body (UsageError, "
                                       "ValidationError, ConfigError)."),
    "NotFound": _json(_ref("Error"), "No such pod, or no such endpoint (NotFoundError)."),
    "MethodNotAllowed": _json(_ref("Error"), "The path exists with another method."),
    "Conflict": _json(_ref("Error"), "The pod's state forbids it, or the reference is "
                                     "ambiguous (ConflictError, AmbiguousError)."),
    "Forbidden": _json(_ref("Error"), "The peer may use the socket but not ask this "
                                      "(PermissionDeniedError)."),
    "PayloadTooLarge": _json(_ref("Error"), "The request body is over 1 MiB."),
    "ServerError": _json(_ref("Error"), "The pod could not start (PodStartError), the "
                                        "isolation driver or state failed, or a bug."),
}

_COMMON = {"400": _error("BadRequest"), "404": _error("NotFound"),
           "405": _error("MethodNotAllowed"), "413": _error("PayloadTooLarge"),
           "500": _error("ServerError")}


def _op(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        errors: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    responses = {"200": ok, **_COMMON}
    if "403" in errors:
        responses["403"] = _error("Forbidden")
    if "409" in errors:
        responses["409"] = _error("Conflict")
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = params
    operation.update(extra)
    return operation


def _pod_op(summary: str, *, params: list[dict[str, Any]] | None = None,
            conflict: bool = True, **extra: Any) -> dict[str, Any]:
    return _op(summary, _json(_ref("Pod"), "The pod's record afterwards."),
               params=[_POD_PARAM, *(params or [])], errors=("409",) if conflict else (),
               **extra)


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jetpack supervisor control API",
            "version": __version__,
            "description": "The supervisor's API on its unix control socket and on the "
                           "optional HTTP listener (http.listen; every request there needs "
                           "Authorization: Bearer <http.token>). docs/api.md tells the story.",
        },
        "servers": [{"url": "/", "description": "the control socket or the HTTP listener"}],
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "responses": copy.deepcopy(_RESPONSES),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "http.token; required on the HTTP listener only "
                                          "(the control socket is guarded by its mode)."},
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/v1/ping": {"get": _op("Liveness.", _json(
                {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}},
                "The supervisor answers."))},
            "/v1/info": {"get": _op("Version, pid and the event hub's position.",
                                    _json(_ref("Info"), "The supervisor."))},
            "/v1/openapi.json": {"get": _op("This document.", _json(
                {"type": "object", "required": ["openapi", "paths"]},
                "An OpenAPI 3.1 document."))},
            "/metrics": {"get": _op("Prometheus metrics (docs/metrics.md).", {
                "description": "The text exposition format, version 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}}})},
            "/v1/pods": {"get": _op("Every pod.", _json(
                {"type": "array", "items": _ref("Pod")}, "The pods, as jetpack list --json."))},
            "/v1/pods/{pod}": {"get": _pod_op("One pod.", conflict=True)},
            "/v1/pods/{pod}/start": {"post": _pod_op(
                "Start a prepared, exited or failed pod; answers once every app runs (or "
                "ran). A pod that cannot start answers 500 with kind PodStartError.")},
            "/v1/pods/{pod}/stop": {"post": _pod_op(
                "Stop a pod; answers once every app's exit is confirmed.",
                params=[_GRACE_PARAM])},
            "/v1/pods/{pod}/restart": {"post": _pod_op("Stop, then start.",
                                                       params=[_GRACE_PARAM])},
            "/v1/pods/{pod}/kill": {"post": _pod_op(
                "Send a signal to every app of a running pod.",
                params=[{"name": "signal", "in": "query", "required": False,
                         "description": "A name (TERM, SIGTERM) or number; default SIGKILL.",
                         "schema": {"type": "string"}}])},
            "/v1/pods/{pod}/wait": {"get": _pod_op(
                "Answer once the pod no longer runs (at once if it does not).")},
            "/v1/pods/{pod}/run": {"post": _op(
                "Start the pod and stream its apps' output until it exits.",
                {"description": "HTTP/1.1 chunked, one JSON object a line: output messages, "
                                "then one exit (or error) message.",
                 "content": {"application/x-ndjson": {"schema": _ref("RunMessage")}}},
                params=[_POD_PARAM, {"name": "rm", "in": "query", "required": False,
                                     "description": "Destroy the pod after it exits.",
                                     "schema": _FLAG}],
                errors=("409",))},
            "/v1/run": {"post": _op(
                "jetpack run IMAGE...: prepare a pod (as jetpack prepare), then run it as "
                "POST /v1/pods/{pod}/run does; one app naming a pod runs that pod. Root's "
                "only (the control socket's peer credentials): 403 for anyone else. An image "
                "not in the store answers 404 with nothing made.",
                {"description": "HTTP/1.1 chunked, one JSON object a line: a pod message, "
                                "output messages, then one exit (or error) message.",
                 "content": {"application/x-ndjson": {"schema": _ref("RunMessage")}}},
                params=[{"name": "rm", "in": "query", "required": False,
                         "description": "Destroy the pod after it exits.", "schema": _FLAG}],
                errors=("403", "409"),
                requestBody={"required": True, "content": {"application/json": {
                    "schema": _ref("RunRequest")}}})},
            "/v1/pods/{pod}/attach": {"get": {
                "summary": "The app's terminal (pods run with -t) over a websocket: binary "
                           "frames carry output and input; a text frame {\"type\": \"resize\", "
                           "\"rows\": R, \"cols\": C} resizes it; the server's last text frame "
                           "is {\"type\": \"exit\", \"pod\": POD}.",
                "x-websocket": True,
                "parameters": [_POD_PARAM, {"name": "app", "in": "query", "required": False,
                                            "description": "Default: the pod's first app.",
                                            "schema": {"type": "string"}}],
                "responses": {"101": {"description": "Switching to the websocket protocol."},
                              "404": _TEXT_REFUSAL, "409": _TEXT_REFUSAL}}},
            "/v1/events": {"get": {
                "summary": "The event log as a websocket: one text message per event "
                           "(docs/events.md, docs/events.schema.json), heartbeats "
                           "{\"type\": \"heartbeat\", \"last_seq\": N}; close codes 1001, "
                           "1011, 4400, 4408, 4410.",
                "x-websocket": True,
                "parameters": [
                    {"name": "since", "in": "query", "required": False,
                     "description": "A seq (exclusive) or an RFC 3339 time; absent: new "
                                    "events only.", "schema": {"type": "string"}},
                    {"name": "pod", "in": "query", "required": False, "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "type", "in": "query", "required": False, "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "app", "in": "query", "required": False, "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "token", "in": "query", "required": False,
                     "description": "http.token, for clients that cannot send a header.",
                     "schema": {"type": "string"}},
                ],
                "responses": {"101": {"description": "Switching to the websocket protocol."},
                              "401": _TEXT_REFUSAL, "404": _TEXT_REFUSAL,
                              "503": _TEXT_REFUSAL}}},
            "/v1/pods/{pod}/logs": {"get": _op(
                "The last lines of each app's log file (the dashboard's log tail).",
                _json({"type": "object", "required": ["pod", "apps"],
                       "properties": {"pod": {"type": "string"},
                                      "apps": {"type": "object",
                                               "additionalProperties": {"type": "string"}}}},
                      "Each app's last lines, by app name."),
                params=[_POD_PARAM, {"name": "lines", "in": "query", "required": False,
                                     "description": "How many lines (default 100, at most "
                                                    "1000).",
                                     "schema": {"type": "integer", "minimum": 1,
                                                "maximum": 1000}}])},
            "/v1/dashboard": {"get": _op(
                "The dashboard's URL with its one-time ?token= (what jetpack dashboard "
                "prints); null when the HTTP listener is off.",
                _json({"type": "object", "required": ["url"],
                       "properties": {"url": {"type": ["string", "null"]}}},
                      "The dashboard's address."))},
            "/v1/shutdown": {"post": _op(
                "Ask the supervisor to exit (daemon-stop).",
                _json({"type": "object", "required": ["stopping", "keep_pods"],
                       "properties": {"stopping": {"const": True},
                                      "keep_pods": {"type": "boolean"}}},
                      "The supervisor is stopping."),
                params=[{"name": "keep_pods", "in": "query", "required": False,
                         "description": "Leave pods running for the next supervisor.",
                         "schema": _FLAG}])},
            "/ui": {"get": {
                "summary": "The dashboard (HTML, package data); on the listener it accepts "
                           "?token= once and keeps it in an HttpOnly cookie.",
                "parameters": [{"name": "token", "in": "query", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The dashboard page.",
                                      "content": {"text/html": {"schema": {"type": "string"}}}},
                              "401": {"description": "No token, or a wrong one."}}}},
        },
    }


DOCUMENT = _document()
"""The document; treat as read-only (``document()`` gives a copy)."""


def document() -> dict[str, Any]:
    return copy.deepcopy(DOCUMENT)


def add_openapi_route(router: Router) -> None:
    """``GET /v1/openapi.json``."""

    async def openapi(request: Request) -> Any:
        del request
        return DOCUMENT

    router.add("GET", "/v1/openapi.json", openapi)
