"""The pod routes of the control API: list, start, stop, restart, kill, wait, shutdown.

Handlers translate HTTP into PodManager calls; errors travel as ``jetpack.errors`` classes
(api.py maps them to status codes and the CLI's client raises them again).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import trio

from jetpack.errors import UsageError
from jetpack.supervisor.api import Request, Router
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
        pods = await trio.to_thread.run_sync(manager.store.all)
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

    router.add("GET", "/v1/pods", list_pods)
    router.add("GET", "/v1/pods/{pod}", show)
    router.add("POST", "/v1/pods/{pod}/start", start)
    router.add("POST", "/v1/pods/{pod}/stop", stop)
    router.add("POST", "/v1/pods/{pod}/restart", restart)
    router.add("POST", "/v1/pods/{pod}/kill", kill)
    router.add("GET", "/v1/pods/{pod}/wait", wait)
    router.add("POST", "/v1/shutdown", stop_supervisor)
