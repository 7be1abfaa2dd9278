"""The pod routes of the control API: list, start, stop, restart, kill, wait, shutdown.

Handlers translate HTTP into PodManager calls; errors travel as ``jetpack.errors`` classes
(api.py maps them to status codes and the CLI's client raises them again). A pod that cannot
start answers ``PodStartError`` (``pod NAME failed to start: REASON``). Every database read
goes through the manager's ``in_db_thread``, the connection's one limiter.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import trio

from jetpack.errors import JetpackError, UsageError
from jetpack.supervisor.api import Request, Router, reject_websocket
from jetpack.supervisor.pods import PodManager


def _grace(request: Request) -> float | None:
    value = request.arg("grace")
    if value is None or value == "":
        return None
    try:
        grace = float(value)
    except ValueError:
        raise UsageError(f"grace must be a number of seconds, not {value!r}") from None
    if grace < 0:
        raise UsageError("grace must not be negative")
    return grace


def _signal(request: Request) -> int:
    name = (request.arg("signal") or "SIGKILL").upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {name}") from None


def add_pod_routes(
    router: Router, manager: PodManager, shutdown: Callable[[bool], None]
) -> None:
    """Register the pod routes; ``shutdown(keep_pods)`` asks the daemon to exit."""

    async def list_pods(request: Request) -> Any:
        del request
        pods = await manager.in_db_thread(manager.store.all)
        return [pod.to_json_obj() for pod in pods]

    async def show(request: Request) -> Any:
        return (await manager.resolve(request.params["pod"])).to_json_obj()

    async def start(request: Request) -> Any:
        return (await manager.start(request.params["pod"])).to_json_obj()

    async def stop(request: Request) -> Any:
        return (await manager.stop(request.params["pod"], _grace(request))).to_json_obj()

    async def restart(request: Request) -> Any:
        return (await manager.restart(request.params["pod"], _grace(request))).to_json_obj()

    async def kill(request: Request) -> Any:
        return (await manager.kill(request.params["pod"], _signal(request))).to_json_obj()

    async def wait(request: Request) -> Any:
        return (await manager.wait(request.params["pod"])).to_json_obj()

    async def stop_supervisor(request: Request) -> Any:
        keep = (request.arg("keep_pods") or "false").lower() in ("1", "true", "yes")
        shutdown(keep)
        return {"stopping": True, "keep_pods": keep}

    async def attach(scope: Any, receive: Any, send: Any, params: dict[str, str]) -> None:
        """The app's terminal over a websocket: binary frames are its output and input; a text
        frame ``{"type": "resize", "rows": R, "cols": C}`` resizes it; the server ends with a
        text frame ``{"type": "exit", ...}`` (the pod's record) when the app is gone."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            pod = await manager.resolve(params["pod"])
            query = parse_qs(scope["query_string"].decode("latin-1"))
            app = query.get("app", [pod.apps[0].name if pod.apps else ""])[-1]
            pod.app(app)
        except JetpackError as exc:
            await reject_websocket(send, 404, str(exc))
            return
        terminal_of = getattr(manager.runtime, "terminal", None)
        terminal = terminal_of(pod.uuid, app) if terminal_of is not None else None
        if terminal is None:
            await reject_websocket(send, 409, f"app {app} of pod {pod.name} is not running "
                                              "with a terminal")
            return
        await send({"type": "websocket.accept"})
        with terminal.attach() as (scrollback, output):
            async with trio.open_nursery() as nursery:

                async def to_client() -> None:
                    if scrollback:
                        await send({"type": "websocket.send", "bytes": scrollback})
                    async for chunk in output:
                        await send({"type": "websocket.send", "bytes": chunk})
                    if terminal.ended.is_set():
                        final = await manager.wait(pod.uuid)
                        await send({"type": "websocket.send", "text": json.dumps(
                            {"type": "exit", "pod": final.to_json_obj()})})
                    await send({"type": "websocket.close", "code": 1000, "reason": ""})
                    nursery.cancel_scope.cancel()

                async def from_client() -> None:
                    while True:
                        event = await receive()
                        if event["type"] == "websocket.disconnect":
                            break  # detached: the app goes on
                        if event.get("bytes"):
                            await terminal.write(event["bytes"])
                        elif event.get("text"):
                            control = json.loads(event["text"])
                            if control.get("type") == "resize":
                                terminal.resize(int(control["rows"]), int(control["cols"]))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(to_client)
                nursery.start_soon(from_client)

    router.add_websocket("/v1/pods/{pod}/attach", attach)
    router.add("GET", "/v1/pods", list_pods)
    router.add("GET", "/v1/pods/{pod}", show)
    router.add("POST", "/v1/pods/{pod}/start", start)
    router.add("POST", "/v1/pods/{pod}/stop", stop)
    router.add("POST", "/v1/pods/{pod}/restart", restart)
    router.add("POST", "/v1/pods/{pod}/kill", kill)
    router.add("GET", "/v1/pods/{pod}/wait", wait)
    router.add("POST", "/v1/shutdown", stop_supervisor)
