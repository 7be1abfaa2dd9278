"""Entry point: global options, the command table, dispatch and error reporting.

Each command lives in a module with ``add_arguments(parser)`` and ``run(ctx, args) -> int``;
the table below names it without importing it, so start-up stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from jetpack import __version__
from jetpack.errors import JetpackError, UsageError


@dataclass(frozen=True)
class Command:
    module: str  # under jetpack.cli
    summary: str
    supervisor: bool = False  # needs a running supervisor
    light: bool = False  # logs nothing: structlog is not even set up (a fast start-up)


# One line per command. Keep alphabetical inside each group.
COMMANDS: dict[str, Command] = {
    # store and configuration (no supervisor needed)
    "init": Command("setup", "create the state root, datasets, database and keys"),
    "config": Command("setup", "print the merged configuration, or one key's value"),
    "doctor": Command("doctor", "check the host for what the configured drivers need"),
    "version": Command("setup", "print jetpack's version"),
    "help": Command("setup", "show help for jetpack or one command"),
    "import": Command("images", "import an ACI file (or - for stdin); prints the image ID"),
    "images": Command("images", "list images"),
    "show-image": Command("images", "show an image's record and manifest (JSON)"),
    "image-manifest": Command("images", "print an image's manifest"),
    "destroy-image": Command("images", "remove images no pod uses (--force: even then)"),
    "build": Command("build", "build an image: PARENT BUILD_DIR COMMAND..., or --from-dir"),
    "export": Command("images", "write an image as an ACI (--flat: dependencies rendered in)"),
    "tag": Command("images", "point NAME@TAG at an image"),
    "untag": Command("images", "remove a tag"),
    "fetch": Command("trust", "fetch an image by name (discovery), URL or file; verified"),
    "trust": Command("trust", "trust a signing key for a name prefix (--list: show them)"),
    "untrust": Command("trust", "stop trusting a key"),
    "prepare": Command("prepare", "make a pod from images; prints its UUID"),
    "destroy": Command("prepare", "remove pods (a running one is stopped first)"),
    "gc": Command("images", "remove leftovers, long-exited pods (--images: unused images)"),
    "logs": Command("logs", "print an app's output (-f: follow)"),
    "exec": Command("enter", "run a command in a running app (POD[:APP] -- CMD...)"),
    "console": Command("enter", "an interactive shell in a running app"),
    "ps": Command("enter", "list a running pod's processes"),
    # the event log (following needs the supervisor; --no-follow reads the database)
    "events": Command("events", "print the event log, or follow it live"),
    "list": Command("pods", "list pods with their state, address and apps", light=True),
    "manifest": Command("pods", "print a pod's reified pod manifest", light=True),
    "enable": Command("pods", "start a pod whenever the supervisor starts (--priority N)",
                      light=True),
    "disable": Command("pods", "stop starting a pod with the supervisor", light=True),
    # need the supervisor
    "daemon": Command("pods", "run the supervisor in the foreground"),
    "status": Command("pods", "say whether a supervisor runs, and its pid", supervisor=True,
                      light=True),
    "dashboard": Command("dashboard", "print the dashboard's URL, with its token",
                         supervisor=True, light=True),
    "daemon-stop": Command("pods", "stop the supervisor (--keep-pods leaves pods running)",
                           supervisor=True, light=True),
    "run": Command("prepare", "run a pod (or images) in the foreground; exits with its status",
                   supervisor=True),
    "attach": Command("attach", "attach this terminal to an app started with run -t",
                      supervisor=True),
    "start": Command("pods", "start a prepared or exited pod (detached)", supervisor=True,
                     light=True),
    "stop": Command("pods", "stop a running pod", supervisor=True, light=True),
    "restart": Command("pods", "stop, then start a pod", supervisor=True, light=True),
    "kill": Command("pods", "send a signal to a pod's apps", supervisor=True, light=True),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (exit 2, plain message) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _global_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="jetpack",
        description="App Container runtime and supervisor (FreeBSD jails, Linux namespaces).",
        add_help=False,
    )
    parser.add_argument("-c", "--config", metavar="PATH", help="configuration file")
    parser.add_argument(
        "-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a configuration key (repeatable)",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    parser.add_argument("--version", action="store_true", help="print the version")
    return parser


def usage_text() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: jetpack [-c CONF] [-o KEY=VALUE]... COMMAND [ARGS]",
        "",
        "App Container runtime and supervisor (FreeBSD jails, Linux namespaces).",
        "",
        "commands:",
    ]
    for name, command in COMMANDS.items():
        marker = " (supervisor)" if command.supervisor else ""
        lines.append(f"  {name:<{width}}  {command.summary}{marker}")
    lines += ["", "'jetpack help COMMAND' shows one command's options."]
    return "\n".join(lines) + "\n"


def command_parser(name: str) -> tuple[ArgumentParser, object]:
    """The parser of one command and its module (imported now)."""
    command = COMMANDS[name]
    module = importlib.import_module(f"jetpack.cli.{command.module}")
    parser = ArgumentParser(prog=f"jetpack {name}", description=command.summary,
                            allow_abbrev=False)
    module.add_arguments(name, parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = any(o.replace(" ", "") in ("debug=on", "debug=true", "debug=yes", "debug=1")
                for o in _overrides_of(args))
    try:
        return _dispatch(args)
    except JetpackError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"jetpack: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"jetpack: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("jetpack: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def _overrides_of(args: list[str]) -> list[str]:
    found = []
    for i, arg in enumerate(args):
        if arg == "-o" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("-o") and len(arg) > 2:
            found.append(arg[2:])
    return found


def _dispatch(args: list[str]) -> int:
    global_parser = _global_parser()
    global_args, rest = _split_global(args)
    options = global_parser.parse_args(global_args)
    if options.version:
        print(f"jetpack {__version__}")
        return 0
    if not rest:
        if options.help:
            sys.stdout.write(usage_text())
            return 0
        sys.stderr.write(usage_text())
        return 2
    name, command_args = rest[0], rest[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}", hint="see 'jetpack help'")
    if options.help:
        command_args = ["--help"]
    parser, module = command_parser(name)
    if name in _RAW:
        parsed, rest = parser.parse_known_args(command_args)
        parsed.words = rest
    elif name in _VERBATIM:
        parsed = parser.parse_args(command_args)
    else:
        parsed = parser.parse_intermixed_args(command_args)
    from jetpack.cli.context import Context

    ctx = Context(config_path=options.config, overrides=options.overrides,
                  configure_logging=not COMMANDS[name].light)
    result: int = module.run(ctx, name, parsed)  # type: ignore[attr-defined]  # module protocol
    return result


# Commands whose trailing arguments are taken verbatim (a command line to run): argparse's
# intermixed parsing would steal their options.
_VERBATIM = {"build", "exec", "help"}
# Commands that read their own words (pod options anywhere, app options after their image).
_RAW = {"prepare", "run"}


def _split_global(args: list[str]) -> tuple[list[str], list[str]]:
    """Global options are those before the command name; the rest is the command's."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config", "-o"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            break
    return args[:i], args[i:]


if __name__ == "__main__":
    sys.exit(main())
