"""``attach POD[:APP]`` and the terminal half of ``run -t``: the app's pty through the control
socket, the local terminal in raw mode, window size passed on, Ctrl-P Ctrl-Q to detach."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from jetpack.cli.context import Context

DETACH = b"\x10\x11"  # Ctrl-P Ctrl-Q, as docker


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("target", metavar="POD[:APP]")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    del name
    from jetpack.cli.logs import split_target
    from jetpack.cli.prepare import exit_status
    from jetpack.store.pods import PodStore

    pod, apps = split_target(PodStore(ctx.state), args.target)
    final = attach_terminal(str(ctx.config.path("supervisor.socket")), pod.uuid,
                            apps[0] if ":" in args.target else None)
    if final is None:
        return 0
    return exit_status(final)


@contextlib.contextmanager
def raw_terminal() -> Iterator[bool]:
    if not os.isatty(0):
        yield False
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield True
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def attach_terminal(socket_path: str, pod_uuid: str, app: str | None) -> dict[str, Any] | None:
    """Relay until the app ends (returns the pod's record) or the user detaches (None)."""
    import trio
    import trio_websocket

    from jetpack.errors import SupervisorError

    resource = f"/v1/pods/{pod_uuid}/attach" + (f"?app={quote(app)}" if app else "")
    result: dict[str, Any] = {}

    async def main() -> None:
        try:
            stream = await trio.open_unix_socket(socket_path)
        except OSError as exc:
            raise SupervisorError(f"cannot reach the supervisor on {socket_path}: {exc}",
                                  hint="start it with 'jetpack daemon'") from None
        async with stream, trio.open_nursery() as nursery:
            try:
                ws = await trio_websocket.wrap_client_stream(nursery, stream, "localhost",
                                                             resource)
            except trio_websocket.ConnectionRejected as exc:
                body = (exc.body or b"").decode(errors="replace").strip()
                raise SupervisorError(f"cannot attach: {body}") from None
            with raw_terminal() as is_tty:
                async with trio.open_nursery() as relay:

                    async def resize() -> None:
                        if not is_tty:
                            return
                        cols, rows = os.get_terminal_size(0)
                        await ws.send_message(json.dumps(
                            {"type": "resize", "rows": rows, "cols": cols}))

                    async def on_winch() -> None:
                        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
                            async for _ in signals:
                                await resize()

                    async def keyboard() -> None:
                        stdin = trio.lowlevel.FdStream(os.dup(0))
                        previous = b""
                        async with stdin:
                            while True:
                                data = await stdin.receive_some(4096)
                                if not data:
                                    return  # stdin closed: keep showing output
                                if DETACH in previous[-1:] + data:
                                    result["detached"] = True
                                    relay.cancel_scope.cancel()
                                    return
                                previous = data
                                await ws.send_message(data)

                    async def screen() -> None:
                        while True:
                            try:
                                message = await ws.get_message()
                            except trio_websocket.ConnectionClosed:
                                break
                            if isinstance(message, bytes):
                                os.write(1, message)
                            else:
                                control = json.loads(message)
                                if control.get("type") == "exit":
                                    result["pod"] = control["pod"]
                        relay.cancel_scope.cancel()

                    await resize()
                    relay.start_soon(on_winch)
                    relay.start_soon(keyboard)
                    relay.start_soon(screen)
            with trio.move_on_after(1):
                await ws.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    if result.get("detached"):
        print(f"\r\ndetached; 'jetpack attach {pod_uuid}' attaches again", file=sys.stderr)
        return None
    pod: dict[str, Any] | None = result.get("pod")
    return pod if pod is not None else {}
