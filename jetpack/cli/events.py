"""``jetpack events``: print the event log, and follow it live through the supervisor.

``--no-follow`` reads the state database directly (no supervisor needed); following connects to
``/v1/events`` and survives supervisor restarts, printing every event exactly once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jetpack.cli.context import Context
from jetpack.events import EventFilter, events_to_lines, format_human, iter_events, parse_since


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("--since", metavar="SEQ|TIME",
                        help="start after this seq or RFC 3339 time (exclusive; 0: the whole "
                             "retained log); default: the whole log with --no-follow, else "
                             "only new events")
    parser.add_argument("--pod", action="append", default=[], metavar="POD",
                        help="only events of this pod (UUID, UUID prefix or name); repeatable")
    parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                        help="only events of this type or type prefix (pod. or pod); repeatable")
    parser.add_argument("--app", action="append", default=[], metavar="APP",
                        help="only events of this app; repeatable")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line (the websocket's message form)")
    parser.add_argument("--no-follow", action="store_true",
                        help="print what the log holds and exit (no supervisor needed)")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    del name
    event_filter = EventFilter(tuple(args.pod), tuple(args.type), tuple(args.app))
    since = parse_since(args.since) if args.since is not None else None
    if args.no_follow:
        return _print_log(ctx, since, event_filter, as_json=args.json)
    return _follow(ctx, since, event_filter, as_json=args.json)


def _print_log(
    ctx: Context, since: int | str | None, event_filter: EventFilter, *, as_json: bool
) -> int:
    from jetpack.events import resolve_since

    db = ctx.state
    position = resolve_since(db, since if since is not None else 0)
    out = sys.stdout
    for line in events_to_lines(iter_events(db, position, event_filter), as_json=as_json):
        out.write(line + "\n")
    out.flush()
    return 0


def _follow(
    ctx: Context, since: int | str | None, event_filter: EventFilter, *, as_json: bool
) -> int:
    import trio

    from jetpack.cli.client import ControlClient
    from jetpack.cli.eventclient import follow_events

    client = ControlClient(ctx.config.path("supervisor.socket"))

    def emit(text: str, event: dict[str, Any]) -> None:
        # Flushed per event: a follower feeds pipes and scripts as events happen.
        print(text if as_json else format_human(event), flush=True)

    trio.run(follow_events, client, since, event_filter, emit)
    return 0
