"""Pod commands: ``list`` (reads the store), and ``start``, ``stop``, ``restart``, ``kill``,
``daemon`` and ``daemon-stop`` (through, or as, the supervisor)."""

from __future__ import annotations

import sys

from jetpack.cli.context import Context

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "list":
        parser.add_argument("--json", action="store_true",
                            help="print a JSON array (full UUIDs, RFC 3339 times)")
        parser.add_argument("-q", "--quiet", action="store_true", help="print only full UUIDs")
        parser.add_argument("--no-trunc", action="store_true",
                            help="full UUIDs in the table (default: a unique prefix)")
    elif name in ("start", "stop", "restart", "kill"):
        parser.add_argument("pods", nargs="+", metavar="POD", help="UUID, UUID prefix or name")
        if name in ("stop", "restart"):
            parser.add_argument("--timeout", type=float, metavar="S",
                                help="grace before SIGKILL (default: pod.stop-timeout)")
        if name == "kill":
            parser.add_argument("-s", "--signal", default="KILL",
                                help="signal name or number (default KILL)")
    elif name in ("enable", "disable"):
        parser.add_argument("pods", nargs="+", metavar="POD", help="UUID, UUID prefix or name")
        if name == "enable":
            parser.add_argument("--priority", type=int, metavar="N",
                                help="boot order: lower starts first (default 99)")
    elif name == "manifest":
        parser.add_argument("pod", metavar="POD")
    elif name == "status":
        parser.add_argument("pod", nargs="?", metavar="POD",
                            help="show this pod in full (no supervisor needed)")
        parser.add_argument("--json", action="store_true",
                            help="print a JSON object (no supervisor: {\"running\": false}, "
                                 "exit 1)")
        parser.epilog = ("Without POD: exit 0 when a supervisor answers, 1 when none runs "
                         "(also with --json).")
    elif name == "daemon":
        parser.add_argument("--pidfile", metavar="PATH", help="write the supervisor's pid here")
    elif name == "daemon-stop":
        parser.add_argument("--keep-pods", action="store_true",
                            help="leave pods running for the next supervisor to adopt")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    if name == "list":
        return _list(ctx, args)
    if name == "daemon":
        return _daemon(ctx, args)
    if name in ("enable", "disable"):
        return _enable(ctx, args, enable=name == "enable")
    if name == "manifest":
        import json

        from jetpack.store.pods import PodStore

        pod = PodStore(ctx.state).resolve(args.pod)
        print(json.dumps(json.loads(pod.manifest), indent=2))
        return 0
    if name == "status":
        if args.pod is not None:
            from jetpack.cli.podstatus import show_pod

            return show_pod(ctx, args.pod, as_json=args.json)
        return _status(ctx, as_json=args.json)
    if name == "daemon-stop":
        client = _client(ctx)
        client.request_sync("POST", "/v1/shutdown",
                            params={"keep_pods": "1" if args.keep_pods else "0"})
        return 0
    client = _client(ctx)
    for ref in args.pods:
        params: dict[str, Any] = {}
        if getattr(args, "timeout", None) is not None:
            params["grace"] = args.timeout
        if name == "kill":
            params["signal"] = args.signal
        pod = client.request_sync("POST", f"/v1/pods/{ref}/{name}", params=params, timeout=None)
        print(f"{pod['uuid']} {pod['state']}")
    return 0


def _client(ctx: Context) -> Any:
    from jetpack.cli.client import ControlClient

    return ControlClient(ctx.config["supervisor.socket"])


def _status(ctx: Context, *, as_json: bool) -> int:
    from jetpack.cli.client import NoSupervisorError

    try:
        info = _client(ctx).request_sync("GET", "/v1/info")
    except NoSupervisorError:
        if not as_json:
            raise
        ctx.print_json({"running": False})
        return 1
    if as_json:
        ctx.print_json({"running": True, **info})
    else:
        print(f"supervisor pid {info['pid']}, jetpack {info['version']}, "
              f"event log at seq {info['events']['last_seq']}, "
              f"{info['events']['subscribers']} event subscribers")
    return 0


def _enable(ctx: Context, args: argparse.Namespace, *, enable: bool) -> int:
    from jetpack.store.pods import PodStore

    store = PodStore(ctx.state)
    for ref in args.pods:
        pod = store.resolve(ref)
        with ctx.state.transaction() as tx:
            store.set_boot(tx, pod, enable, getattr(args, "priority", None))
        print(f"{pod.uuid} {'enabled' if enable else 'disabled'} (priority {pod.priority})")
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    from jetpack.cli import podview

    pods = None if args.json else podview.read_pods(ctx.config["root.path"])
    if pods is None:  # --json, or a database the light reader leaves to the store
        from jetpack.store.pods import PodStore

        records = PodStore(ctx.state).all()
        if args.json:
            ctx.print_json([pod.to_json_obj() for pod in records])
            return 0
        pods = [{"uuid": p.uuid, "name": p.name, "state": p.state, "ip": p.ip,
                 "created": p.created, "boot": p.boot, "priority": p.priority,
                 "apps": [a.to_json_obj() for a in p.apps]} for p in records]
    if args.quiet:
        for pod in pods:
            print(pod["uuid"])
        return 0
    short = podview.short_uuids([p["uuid"] for p in pods])
    rows, colours = [], []
    for pod in pods:
        boot = f"boot:{pod['priority']}" if pod["boot"] else "-"
        uuid = pod["uuid"] if args.no_trunc else short[pod["uuid"]]
        rows.append((uuid, pod["name"], pod["state"], pod["ip"] or "-",
                     podview.age(pod["created"]), boot, podview.apps_cell(pod["apps"])))
        colours.append((None, None, podview.STATE_COLOURS.get(pod["state"]), None, None, None,
                        None))
    ctx.print_table(("UUID", "NAME", "STATE", "IP", "CREATED", "BOOT", "APPS"), rows, colours)
    return 0


def _daemon(ctx: Context, args: argparse.Namespace) -> int:
    from pathlib import Path

    import trio

    from jetpack.log import configure_logging
    from jetpack.supervisor.daemon import Daemon, write_pidfile
    from jetpack.supervisor.stage1_runtime import open_runtime

    config = ctx.config
    configure_logging(debug=config.debug, json_lines=not sys.stderr.isatty())
    daemon = Daemon(config, open_runtime(config), config_path=ctx.config_path,
                    overrides=ctx.overrides)
    remove_pidfile = write_pidfile(Path(args.pidfile)) if args.pidfile else None
    try:
        trio.run(daemon.run)
    finally:
        if remove_pidfile is not None:
            remove_pidfile()
    return 0
