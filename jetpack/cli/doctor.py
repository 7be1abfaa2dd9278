"""``doctor``: check the host for what the configured drivers need; exit 1 when something
needed is missing, each missing piece printed with what fixes it."""

from __future__ import annotations

import argparse

from jetpack.cli.context import Context


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only what is missing or worth a warning")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    from jetpack.doctor import host_checks

    checks = host_checks(ctx.config)
    shown = [c for c in checks if c.status != "ok"] if args.quiet else checks
    if args.json:
        ctx.print_json([c.to_json() for c in shown])
    else:
        for check in shown:
            print(f"{check.status:<8} {check.what}")
            for line in check.fix:
                print(f"{'':<8}   fix: {line}")
    return 1 if any(c.status == "missing" for c in checks) else 0
