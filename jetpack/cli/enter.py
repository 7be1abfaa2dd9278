"""``exec``, ``console`` and ``ps``: entering a running pod directly (jexec-style, no
supervisor needed) and listing its processes."""

from __future__ import annotations

import argparse
from typing import Any

from jetpack.cli.context import Context
from jetpack.errors import ConflictError, UsageError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="POD[:APP]", help="the pod, and one of its apps")
    if name == "exec":
        parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
        parser.add_argument("-u", "--user", help="run as this user (default: the app's)")
    elif name == "console":
        parser.add_argument("-u", "--user", default="0",
                            help="user of the shell (default root, as jexec)")
    elif name == "ps":
        parser.add_argument("--json", action="store_true", help="print a JSON array")


def _target(ctx: Context, target: str) -> tuple[Any, Any]:
    from jetpack.cli.logs import split_target
    from jetpack.store.pods import PodStore

    pod, apps = split_target(PodStore(ctx.state), target)
    if pod.state not in ("running", "starting", "stopping") or not pod.runtime:
        raise ConflictError(f"pod {pod.name} is not running ({pod.state})")
    return pod, pod.app(apps[0])


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    if name == "ps":
        return _ps(ctx, args)
    pod, app = _target(ctx, args.target)
    if name == "exec":
        argv = list(args.command)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if not argv:
            raise UsageError("exec needs a command: jetpack exec POD[:APP] -- CMD...")
    else:
        argv = ["/bin/sh", "-l"]
    return _enter(ctx, pod, app, argv, args.user, tty=name == "console")


def _enter(ctx: Context, pod: Any, app: Any, argv: list[str], user: str | None, *,
           tty: bool) -> int:
    import json

    import trio

    from jetpack.stage1.base import AppSpec, SandboxHandle
    from jetpack.stage1.drivers import isolation_driver
    from jetpack.storage import open_storage

    rootfs = open_storage(ctx.config).mount_app(pod.uuid, app.name)
    spec = json.loads(app.spec)
    # The command gets the app's isolator plan (carried by the spec) and joins the pod's
    # cgroups (the driver's, recorded in the sandbox handle).
    spec.update(rootfs=str(rootfs), metadata_url="", log_path=None)
    app_spec = AppSpec.from_json(spec)
    driver = isolation_driver(ctx.config)

    async def main() -> int:
        handle = SandboxHandle.from_json(pod.runtime)
        process = await driver.recover_app(handle, app.process)
        if process is None:
            raise ConflictError(f"app {app.name} of pod {pod.name} is not running")
        try:
            status = await driver.enter(handle, process, app_spec, argv, user=user, tty=tty)
        finally:
            process.close()
        if status.signal is not None:
            return 128 + status.signal
        return status.code or 0

    return trio.run(main)


def _ps(ctx: Context, args: argparse.Namespace) -> int:
    from jetpack.stage1.base import SandboxHandle
    from jetpack.stage1.drivers import pod_processes
    from jetpack.store.pods import PodStore

    pod = PodStore(ctx.state).resolve(args.target.partition(":")[0])
    rows = []
    if pod.runtime:
        # The driver that made the sandbox lists it (/proc on Linux, ps -J for jails).
        rows = pod_processes(SandboxHandle.from_json(pod.runtime),
                             {a.name: a.pid for a in pod.apps})
    if args.json:
        ctx.print_json(rows)
    else:
        ctx.print_table(("PID", "APP", "COMMAND"),
                        [(r["pid"], r["app"], r["command"]) for r in rows])
    return 0
