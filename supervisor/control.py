"""The pod routes of the control API: list, start, stop, restart, kill, wait, run, shutdown.

Handlers translate HTTP into PodManager calls; errors travel as ``jetpack.errors`` classes
(api.py maps them to status codes and the CLI's client raises them again). A pod that cannot
start answers ``PodStartError`` (``pod NAME failed to start: REASON``). Every database read
goes through the manager's ``in_db_thread``, the connection's one limiter.
"""

from __future__ import annotations

import base64
import json
import math
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio

from jetpack.errors import JetpackError, PermissionDeniedError, PodStartError, UsageError
from jetpack.log import get_logger
from jetpack.store.pods import PodRecord
from jetpack.supervisor.api import (
    PEER_UID,
    Request,
    Router,
    StreamResponse,
    Write,
    error_body,
    reject_websocket,
)
from jetpack.supervisor.pods import PodManager
from jetpack.supervisor.stage1_runtime import app_log_path
from jetpack.supervisor.usage import pods_with_usage

FOLLOW_INTERVAL = 0.01
"""How often ``run`` looks at its pod's log files for new output, only while the request is
open (seconds): a stat per app, so output reaches the client within about this much."""
READ_CHUNK = 1 << 16
"""Most bytes of one app's log sent in one output message."""

log = get_logger(component="api")


def _grace(request: Request) -> float | None:
    value = request.arg("grace")
    if value is None or value == "":
        return None
    try:
        grace = float(value)
    except ValueError:
        raise UsageError(f"grace must be a number of seconds, not {value!r}") from None
    if not math.isfinite(grace):  # nan made the stop wait forever (found by fuzzing)
        raise UsageError(f"grace must be a finite number of seconds, not {value!r}")
    if grace < 0:
        raise UsageError("grace must not be negative")
    return grace


def _signal(request: Request) -> int:
    name = (request.arg("signal") or "SIGKILL").upper()
    if name.isdigit():
        # str.isdigit() also holds for "²" and 5000-digit strings, which int() refuses
        number = int(name) if name.isascii() and len(name) <= 3 else -1
        if number not in signal.valid_signals():
            raise UsageError(f"unknown signal number {name[:20]}")
        return number
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {name[:40]}") from None


def _flag(request: Request, name: str) -> bool:
    return (request.arg(name) or "0").lower() in ("1", "true", "yes")


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class LogFollower:
    """What the apps of a pod write to their log files from now on (a file that shrank was
    truncated: it is read again from its start)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.offsets = {app: _size(path) for app, path in paths.items()}

    def read(self) -> list[tuple[str, bytes]]:
        """The next bytes of each app that wrote (at most ``READ_CHUNK`` each)."""
        chunks = []
        for app, path in self.paths.items():
            size = _size(path)
            if size < self.offsets[app]:
                self.offsets[app] = 0
            if size == self.offsets[app]:
                continue
            with path.open("rb") as f:
                f.seek(self.offsets[app])
                data = f.read(min(size - self.offsets[app], READ_CHUNK))
            self.offsets[app] += len(data)
            chunks.append((app, data))
        return chunks


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def add_pod_routes(
    router: Router, manager: PodManager, shutdown: Callable[[bool], None]
) -> None:
    """Register the pod routes; ``shutdown(keep_pods)`` asks the daemon to exit."""

    async def list_pods(request: Request) -> Any:
        del request
        pods = await manager.in_db_thread(manager.store.all)
        return await pods_with_usage(pods, sandboxes())

    async def show(request: Request) -> Any:
        pod = await manager.resolve(request.params["pod"])
        return (await pods_with_usage([pod], sandboxes()))[0]

    def sandboxes() -> dict[str, dict[str, Any]]:
        return {uuid: dict(task.sandbox) for uuid, task in list(manager.tasks.items())
                if task.sandbox}

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

    async def destroy(uuid: str) -> None:
        """``run --rm``: the exited pod's clones, files and row (as ``jetpack destroy``)."""
        from jetpack.store.images import ImageStore
        from jetpack.store.lifecycle import destroy_pod, forget_network

        await manager.torn_down(uuid)

        def remove() -> PodRecord:
            pod = manager.store.get(uuid)
            destroy_pod(manager.config, manager.db, ImageStore(manager.config, manager.db), pod,
                        network=False)
            return pod

        pod = await manager.in_db_thread(remove)
        manager.notify()  # pod.destroyed reaches subscribers now, not at the hub's next poll
        if pod.ip is not None:
            # its inert anti-spoofing chain: one nftables deletion (an RCU wait of ~15 ms),
            # neither under the database's limiter nor before the answer; a supervisor that
            # ends first leaves it to the next one's start, which prunes it
            manager.in_background(f"forgetting the network of pod {uuid}",
                                  partial(forget_network, manager.config, pod))

    async def run(request: Request) -> Any:
        """Start the pod and stream its apps' output until it exits (``rm``: then destroy it);
        a pod that cannot start answers ``PodStartError`` as ``start`` does (``rm``: destroyed
        first)."""
        pod = await manager.resolve(request.params["pod"])
        return await run_pod(pod, _flag(request, "rm"), None)

    async def prepare_and_run(request: Request) -> Any:
        """``jetpack run IMAGE...``: prepare the pod from the command line's options (JSON, as
        ``PrepareRequest.from_json`` reads them), then ``run`` it; the stream opens with a
        ``pod`` message (its uuid, name, apps, and prepare's warnings). A single word naming a
        pod runs that pod, as ``run POD``. An image not in the store answers ``NotFoundError`` with
        nothing made (the CLI fetches it, then prepares the pod itself). Root only: the pod's
        options (host volumes) are root's to choose, not the socket group's or a token's."""
        from jetpack.store.images import ImageStore
        from jetpack.store.prepare import PrepareRequest, prepare_pod

        if PEER_UID.get() != 0:
            raise PermissionDeniedError("only root may prepare pods through the supervisor",
                                        hint="prepare the pod with 'jetpack prepare' first")
        options = PrepareRequest.from_json(request.json())
        pod: PodRecord | None = None
        if len(options.apps) == 1:
            try:
                pod = await manager.resolve(options.apps[0].image)
            except JetpackError:
                pod = None
        prepared = pod is None
        if pod is None:

            def prepare() -> PodRecord:
                return prepare_pod(manager.config, manager.db,
                                   ImageStore(manager.config, manager.db), options)

            pod = await manager.in_db_thread(prepare)
            manager.notify()
        return await run_pod(pod, _flag(request, "rm"), {
            "type": "pod", "uuid": pod.uuid, "name": pod.name,
            "apps": [app.name for app in pod.apps], "prepared": prepared,
            "warnings": list(pod.options.isolator_warnings) if prepared else []})

    async def run_pod(pod: PodRecord, rm: bool, opening: dict[str, Any] | None) -> Any:
        follower = LogFollower({app.name: app_log_path(manager.config, pod.uuid, app.name)
                                for app in pod.apps})
        try:
            await manager.start(pod.uuid)
        except PodStartError:
            if rm:
                await destroy(pod.uuid)
            raise

        async def produce(write: Write) -> None:
            finished = False
            try:
                if opening is not None:
                    await write(_line(opening))
                final = await _follow_until_exit(manager, pod, follower, write)
                finished = True
                if rm:
                    await destroy(pod.uuid)
                else:
                    # as the CLI's run has always answered: nothing of the pod left running
                    # or mounted (wait answers before that; destroy waits for it too)
                    await manager.torn_down(pod.uuid)
                await write(_line({"type": "exit", "pod": final.to_json_obj(),
                                   "destroyed": rm}))
            except JetpackError as exc:
                await write(_line({"type": "error", **error_body(exc)}))
            finally:
                if rm and not finished and not manager.detaching:
                    # The client went away: --rm still means the pod goes.
                    with trio.CancelScope(shield=True):
                        try:
                            await manager.stop(pod.uuid)
                            await destroy(pod.uuid)
                        except JetpackError as exc:
                            log.warning("run --rm: could not remove the pod", pod=pod.uuid,
                                        error=str(exc))

        return StreamResponse(produce)

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
    router.add("POST", "/v1/pods/{pod}/run", run)
    router.add("POST", "/v1/run", prepare_and_run)
    router.add("POST", "/v1/shutdown", stop_supervisor)


async def _follow_until_exit(manager: PodManager, pod: PodRecord, follower: LogFollower,
                             write: Write) -> PodRecord:
    """Send every app's new output as it is written until the pod has exited; its record."""
    final: PodRecord | None = None
    exited = trio.Event()

    async def send_output() -> bool:
        chunks = follower.read()
        for app, data in chunks:
            await write(_line({"type": "output", "app": app,
                               "data": base64.b64encode(data).decode()}))
        return bool(chunks)

    async def wait() -> None:
        nonlocal final
        final = await manager.wait(pod.uuid)
        exited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        while not exited.is_set():
            if not await send_output():
                with trio.move_on_after(FOLLOW_INTERVAL):
                    await exited.wait()
    while await send_output():
        pass  # what the apps wrote last (their monitors are gone: the files are complete)
    assert final is not None
    return final
