"""Entry point: global options, the command table, dispatch and error reporting.

Each command lives in a module with ``add_arguments(parser)`` and ``run(ctx, args) -> int``;
the table below names it without importing it, so start-up stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jetpack import __version__
from jetpack.errors import JetpackError, UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn


class Command:
    """One row of the command table (a plain class: ``dataclasses`` alone costs more start-up
    time than ``jetpack list`` may spend on everything)."""

    __slots__ = ("light", "module", "summary", "supervisor")

    def __init__(self, module: str, summary: str, *, supervisor: bool = False,
                 light: bool = False) -> None:
        self.module = module  # under jetpack.cli
        self.summary = summary
        self.supervisor = supervisor  # needs a running supervisor
        self.light = light  # logs nothing: structlog is not even set up (a fast start-up)


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
    "prepare": Command("prepare", "make a pod from images; prints its UUID",
                       light=True),
    "destroy": Command("prepare", "remove pods (a running one is stopped first)",
                       light=True),
    "gc": Command("images", "remove leftovers, long-exited pods (--images: unused images)"),
    "logs": Command("logs", "print an app's output (-f: follow)"),
    "exec": Command("enter", "run a command in a running app (POD[:APP] -- CMD...)"),
    "console": Command("enter", "an interactive shell in a running app"),
    "ps": Command("enter", "list a running pod's processes"),
    "completion": Command("completion", "print a shell completion script (bash or zsh)",
                          light=True),
    # the event log (following needs the supervisor; --no-follow reads the database)
    "events": Command("events", "print the event log, or follow it live"),
    "list": Command("pods", "list pods with their state, address and apps", light=True),
    "manifest": Command("pods", "print a pod's reified pod manifest", light=True),
    "enable": Command("pods", "start a pod whenever the supervisor starts (--priority N)",
                      light=True),
    "disable": Command("pods", "stop starting a pod with the supervisor", light=True),
    # need the supervisor
    "daemon": Command("pods", "run the supervisor in the foreground"),
    "status": Command("pods", "say whether a supervisor runs; status POD: one pod in full",
                      supervisor=True, light=True),
    "dashboard": Command("dashboard", "print the dashboard's URL, with its token",
                         supervisor=True, light=True),
    "daemon-stop": Command("pods", "stop the supervisor (--keep-pods leaves pods running)",
                           supervisor=True, light=True),
    "run": Command("prepare", "run a pod (or images) in the foreground; exits with its status",
                   supervisor=True, light=True),
    "attach": Command("attach", "attach this terminal to an app started with run -t",
                      supervisor=True),
    "start": Command("pods", "start a prepared or exited pod (detached)", supervisor=True,
                     light=True),
    "stop": Command("pods", "stop a running pod", supervisor=True, light=True),
    "restart": Command("pods", "stop, then start a pod", supervisor=True, light=True),
    "kill": Command("pods", "send a signal to a pod's apps", supervisor=True, light=True),
}

# What users of the original jetpack, rkt and docker type: alias -> (command, what it means).
ALIASES: dict[str, str] = {
    "pods": "list",
    "rm": "destroy",
    "rmi": "destroy-image",
    "inspect": "status",  # inspect POD: one pod in full
}

OUTPUT_RULE = ("-o KEY=VALUE sets a configuration key (anywhere); after the command, "
               "-o json is --json")


def _terminal_width() -> int:
    """What ``shutil.get_terminal_size`` answers, without importing shutil (and with it zlib,
    bz2 and lzma) into every command: argparse asks for a formatter on each add_argument."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]  # None only without a stdout, caught below
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns


class HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_width() - 2 if width is None else width)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's, with ``HelpFormatter``'s width."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (exit 2, plain message) instead of exiting."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # argparse's own keywords

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
    aliases: dict[str, list[str]] = {}
    for alias, target in ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    lines = [
        "usage: jetpack [-c CONF] [-o KEY=VALUE]... COMMAND [ARGS]",
        "",
        "App Container runtime and supervisor (FreeBSD jails, Linux namespaces).",
        "",
        "commands:",
    ]
    for name, command in COMMANDS.items():
        marker = " (supervisor)" if command.supervisor else ""
        also = f" [alias: {', '.join(aliases[name])}]" if name in aliases else ""
        lines.append(f"  {name:<{width}}  {command.summary}{marker}{also}")
    lines += [
        "",
        "--json: every listing (list, images, status, config, ps, doctor, trust --list,",
        "  events) prints JSON on stdout instead of a table; scripts should use it.",
        f"{OUTPUT_RULE}.",
        "Short flags combine (run -it, logs -ft); options may follow positional arguments.",
        "",
        "'jetpack help COMMAND' shows one command's options.",
    ]
    return "\n".join(lines) + "\n"


def resolve_command(name: str) -> str:
    """The command a word names (an alias resolved); an unknown word is a usage error that
    suggests the closest command."""
    if name in COMMANDS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    import difflib

    close = difflib.get_close_matches(name, [*COMMANDS, *ALIASES], n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "see 'jetpack help'"
    raise UsageError(f"unknown command {name!r}", hint=hint)


def command_parser(name: str) -> tuple[ArgumentParser, object]:
    """The parser of one command and its module (imported now)."""
    command = COMMANDS[name]
    module = importlib.import_module(f"jetpack.cli.{command.module}")
    parser = ArgumentParser(prog=f"jetpack {name}", description=command.summary,
                            allow_abbrev=False)
    module.add_arguments(name, parser)
    if _has_option(parser, "--json"):
        rule = "--json (or -o json): JSON on stdout, for scripts. -o KEY=VALUE: a config key."
        parser.epilog = f"{parser.epilog}\n{rule}" if parser.epilog else rule
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


def program() -> NoReturn:
    """The ``jetpack`` program (its console script, ``python -m jetpack.cli.main``): ``main``,
    then exit. After a light command (no logging, no supervisor, no thread of its own) only
    stdout and stderr need flushing: it leaves with ``os._exit``, skipping the interpreter's
    teardown of every loaded module (~5 ms, as much as all of ``status``'s own work)."""
    code = main()
    if not _ran["light"]:
        sys.exit(code)
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # what the interpreter's exit answers when the flush fails
    os._exit(code)


_ran = {"light": False}  # a light command ran to its end: ``program`` may skip the teardown


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
    word, command_args = rest[0], rest[1:]
    name = resolve_command(word)
    if word == "inspect" and not options.help and not any(
            not a.startswith("-") for a in command_args):
        raise UsageError("jetpack inspect POD: name the pod to show")
    if options.help:
        command_args = ["--help"]
    parser, module = command_parser(name)
    if name not in _VERBATIM and name not in _RAW:
        command_args = _output_options(parser, command_args, options.overrides)
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
    _ran["light"] = COMMANDS[name].light
    return result


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return option in parser._option_string_actions  # argparse has no public lookup


def _output_options(parser: ArgumentParser, args: list[str], overrides: list[str]) -> list[str]:
    """``-o`` after the command: ``-o KEY=VALUE`` joins the configuration overrides (as before
    the command), ``-o json`` is ``--json``; ``--`` ends the scan."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if arg in ("-o", "--output"):
            if i + 1 >= len(args):
                raise UsageError(f"{arg} needs a value: json, or KEY=VALUE")
            value, i = args[i + 1], i + 2
        elif arg.startswith("--output="):
            value, i = arg.partition("=")[2], i + 1
        elif arg.startswith("-o") and not arg.startswith("--"):
            value, i = arg[2:], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if "=" in value:
            overrides.append(value)
        elif value == "json" and _has_option(parser, "--json"):
            out.append("--json")
        elif value not in ("table", "text"):
            raise UsageError(f"-o {value}: expected json (on a command with --json) or "
                             "KEY=VALUE", hint=OUTPUT_RULE)
    return out


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
    program()
