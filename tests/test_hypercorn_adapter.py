"""The control server's hypercorn adapter against the installed hypercorn: every private name
and call signature it relies on is still there, or the test says which one changed."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest


def test_installed_hypercorn_offers_what_the_adapter_uses() -> None:
    version = importlib.metadata.version("hypercorn")
    try:
        adapter = importlib.import_module("jetpack.supervisor.hypercorn_adapter")
    except ImportError as exc:
        pytest.fail(f"hypercorn {version} lacks a name supervisor/hypercorn_adapter.py "
                    f"imports: {exc}")
    problems = adapter.incompatibilities()
    assert problems == [], (
        f"hypercorn {version} is incompatible with supervisor/hypercorn_adapter.py "
        "(checked against 0.17.3 and 0.18.0):\n  " + "\n  ".join(problems))


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.trio import tcp_server, worker_context

    from jetpack.supervisor.hypercorn_adapter import incompatibilities

    class NewTCPServer:  # as if a release folded config into the context
        def __init__(self, app: object, context: object, stream: object) -> None:
            del app, context, stream

    monkeypatch.setattr(tcp_server, "TCPServer", NewTCPServer)
    monkeypatch.delattr(worker_context, "WorkerContext")
    problems = incompatibilities()
    assert problems[0] == ("hypercorn.trio.tcp_server.TCPServer: signature is (app: 'object', "
                           "context: 'object', stream: 'object') -> 'None', expected parameters "
                           "(app, config, context, state, stream)")
    assert problems[1].startswith("hypercorn.trio.worker_context.WorkerContext: not found")
    assert "TCPServer: instances are no longer awaitable" in problems[2]
    assert len(problems) == 3
