"""Every use of hypercorn's private API, in one place: serving one connection with hypercorn's
trio HTTP/1.1 + websocket protocol under an accept loop and a stream of our own.

Why private API: ``hypercorn.trio.serve`` writes to the socket inside a shielded cancel scope,
so a client that stops reading would pin its connection forever and hold up every graceful
shutdown. Running hypercorn's per-connection ``TCPServer`` on our stream lets every write carry
a deadline (``server.WriteDeadlineStream``). The names and call signatures relied on are
``PRIVATE_API`` below; they were checked against hypercorn 0.17.3 and 0.18.0 (pyproject pins
``hypercorn>=0.17,<0.19``), and ``incompatibilities()`` (run by
tests/test_hypercorn_adapter.py) names whatever an installed hypercorn changed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, LifespanState
from hypercorn.utils import wrap_app

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

PRIVATE_API: dict[str, tuple[str, ...]] = {
    # name: the parameters of its signature (a class: of its constructor, without self)
    "hypercorn.trio.tcp_server.TCPServer": ("app", "config", "context", "state", "stream"),
    "hypercorn.trio.worker_context.WorkerContext": ("max_requests",),
    "hypercorn.utils.wrap_app": ("app", "wsgi_max_body_size", "mode"),
}
"""The private names this module calls, and how it calls them (positionally)."""


class ConnectionServer:
    """One ASGI app served connection by connection; ``serve(stream)`` is a connection handler
    for ``trio.serve_listeners``."""

    def __init__(self, app: ASGIApp, *, graceful_timeout: float, errorlog: logging.Logger
                 ) -> None:
        config = HypercornConfig()
        config.graceful_timeout = graceful_timeout
        config.accesslog = None
        config.errorlog = errorlog
        self._config = config
        self._context = WorkerContext(None)
        # Our apps speak ASGI 3 with plain dicts; hypercorn types the messages as TypedDicts.
        self._app = wrap_app(cast("ASGIFramework", app), 0, "asgi")

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Speak HTTP/websocket on ``stream`` (which has a ``socket``, or is a server-side
        ``trio.SSLStream`` whose transport has one) until it closes."""
        # hypercorn annotates an SSLStream but uses only the Stream methods and `.socket`.
        tls_typed = cast("trio.SSLStream[trio.SocketStream]", stream)
        await TCPServer(self._app, self._config, self._context, LifespanState({}), tls_typed)

    async def terminate(self) -> None:
        """Tell open connections the server is going away (keep-alive ones close)."""
        await self._context.terminated.set()


def incompatibilities() -> list[str]:
    """What the installed hypercorn no longer offers of ``PRIVATE_API``, one line each
    (empty: compatible)."""
    problems = []
    for dotted, expected in PRIVATE_API.items():
        module_name, _, attribute = dotted.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
            signature = inspect.signature(target)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            problems.append(f"{dotted}: not found ({exc})")
            continue
        found = tuple(signature.parameters)
        if found != expected:
            problems.append(f"{dotted}: signature is {signature}, expected parameters "
                            f"({', '.join(expected)})")
    server = getattr(importlib.import_module("hypercorn.trio.tcp_server"), "TCPServer", None)
    if server is not None and not hasattr(server, "__await__"):
        problems.append("hypercorn.trio.tcp_server.TCPServer: instances are no longer awaitable")
    context_class = getattr(importlib.import_module("hypercorn.trio.worker_context"),
                            "WorkerContext", None)
    if context_class is not None:
        try:
            terminated = context_class(None).terminated
        except Exception as exc:  # noqa: BLE001  # reported as the incompatibility it is
            problems.append(f"hypercorn.trio.worker_context.WorkerContext(None).terminated: {exc}")
        else:
            if not inspect.iscoroutinefunction(getattr(terminated, "set", None)):
                problems.append("hypercorn.trio.worker_context.WorkerContext.terminated.set: "
                                "no longer a coroutine function")
    return problems
