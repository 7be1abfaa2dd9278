"""``dashboard``: print the URL of the supervisor's dashboard with its one-time token, as a
notebook server does (opening it trades the token for a cookie)."""

from __future__ import annotations

import argparse

from jetpack.cli.context import Context
from jetpack.errors import SupervisorError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name, parser


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    del name, args
    from jetpack.cli.client import ControlClient

    answer = ControlClient(ctx.config.path("supervisor.socket")).request_sync(
        "GET", "/v1/dashboard")
    if not answer.get("url"):
        raise SupervisorError(
            "the dashboard is off: the supervisor has no HTTP listener",
            hint="set 'http.listen = 127.0.0.1:8080' in jetpack.conf and restart the supervisor "
                 "(docs/dashboard.md)")
    print("The dashboard: open this URL once (it signs this browser in and drops the token "
          "from the address):")
    print(answer["url"])
    return 0
