"""``init``, ``config``, ``version`` and ``help``: the commands that set jetpack up."""

from __future__ import annotations

import argparse
import sys

from jetpack import __version__
from jetpack.cli.context import Context
from jetpack.errors import ConfigError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "config":
        parser.add_argument("keys", nargs="*", metavar="KEY", help="print only these keys' values")
        parser.add_argument("--json", action="store_true", help="print a JSON object")
    elif name == "help":
        parser.add_argument("command", nargs="?", help="the command to describe")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    if name == "version":
        print(f"jetpack {__version__}")
        return 0
    if name == "help":
        return _help(args.command)
    if name == "config":
        return _config(ctx, args)
    return _init(ctx)


def _help(command: str | None) -> int:
    from jetpack.cli.main import command_parser, resolve_command, usage_text

    if command is None:
        sys.stdout.write(usage_text())
        return 0
    parser, _ = command_parser(resolve_command(command))
    parser.print_help()
    return 0


def _config(ctx: Context, args: argparse.Namespace) -> int:
    from jetpack.config import ALIASES, render

    config = ctx.config
    if args.keys:
        for key in args.keys:
            real = ALIASES.get(key, key)
            if real not in config.values:
                raise ConfigError(f"unknown configuration key {key!r}")
        if args.json:
            ctx.print_json({key: config[key] for key in args.keys})
        else:
            for key in args.keys:
                print(config[key])
        return 0
    if args.json:
        ctx.print_json(config.values)
    else:
        sys.stdout.write(render(config))
    return 0


def _init(ctx: Context) -> int:
    from jetpack.init import initialize

    for line in initialize(ctx.config):
        print(line)
    return 0
