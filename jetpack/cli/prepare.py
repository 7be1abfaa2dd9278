"""``prepare``, ``run`` and ``destroy``: making pods from images, running them in the
foreground through the supervisor, and removing them."""

from __future__ import annotations

import re
import sys

from jetpack.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence
    from typing import Any

    from jetpack.cli.context import Context
    from jetpack.store.prepare import PrepareRequest

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

HELP_POD = """pod options (anywhere): --name NAME, --restart never|on-failure[:N]|always,
  -p NAME:HOSTPORT, -v NAME,kind=host|empty[,source=/p,readOnly=true...], -a KEY=VALUE,
  -f POD_MANIFEST|-, --keep-etc (keep the image's resolv.conf and hosts)
app options (after their image): --app-name NAME, --exec 'CMD ARGS', --user U, --group G,
  -e NAME=VALUE, -w DIR, -m VOLUME[:MOUNTPOINT|:/path]; IMAGE -- ARGS... gives argv"""


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "destroy":
        parser.add_argument("pods", nargs="+", metavar="POD")
        return
    parser.epilog = HELP_POD
    from jetpack.cli.main import RawDescriptionHelpFormatter

    parser.formatter_class = RawDescriptionHelpFormatter
    if name == "run":
        parser.epilog += ("\nrun also takes: --rm (destroy after exit), -t or -i (interactive, "
                          "on a terminal: -it)\nshort flags combine: -it, -eNAME=VALUE")
    parser.usage = f"jetpack {name} IMAGE [APP OPTIONS] [IMAGE...] [POD OPTIONS]"


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    if name == "run":
        request, extra = parse_words(args.words)
        # -o KEY=VALUE is this command's configuration, which the supervisor does not have
        if not extra["tty"] and extra["manifest"] is None and not ctx.overrides and _is_root():
            answer = _run_in_supervisor(ctx, request, rm=extra["rm"])
            if answer is not None:
                return answer
    return _run_here(ctx, name, args)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _run_in_supervisor(ctx: Context, request: dict[str, Any], *, rm: bool) -> int | None:
    """``run IMAGE...`` (or ``run POD``) as one ``POST /v1/run``: the supervisor prepares the
    pod, starts it, streams its output, records its exit (``rm``: destroys it) and answers
    with it. None when the supervisor cannot prepare it (an image to fetch first): the pod is
    then prepared here, as ``prepare`` does."""
    from jetpack.cli.client import ControlClient
    from jetpack.errors import NotFoundError, PermissionDeniedError

    client = ControlClient(ctx.config["supervisor.socket"])
    messages = client.stream_sync("POST", "/v1/run", body=request,
                                  params={"rm": "1"} if rm else None)
    try:
        first = next(messages, None)
    except (NotFoundError, PermissionDeniedError):
        # The answer's status, before anything was made: an image to fetch (or the same
        # error again, from here), or a supervisor that cannot tell that this is root.
        return None
    if first is None or first.get("type") != "pod":
        from jetpack.errors import SupervisorError

        raise SupervisorError("the supervisor's run stream did not begin with its pod")
    for warning in first["warnings"]:
        print(f"jetpack: warning: {warning}", file=sys.stderr)
    return _follow_run(messages, len(first["apps"]) > 1)


def _run_here(ctx: Context, name: str, args: argparse.Namespace) -> int:
    from jetpack.store.images import ImageStore

    images = ImageStore(ctx.config, ctx.state)
    if name == "destroy":
        from jetpack.store.lifecycle import destroy_pod
        from jetpack.store.pods import PodStore

        store = PodStore(ctx.state)
        for ref in args.pods:
            pod = store.resolve(ref)
            destroy_pod(ctx.config, ctx.state, images, pod, stop_through_supervisor(ctx))
            print(f"destroyed {pod.uuid}")
        return 0
    from jetpack.store.prepare import options_from_manifest, prepare_pod

    options, extra = parse_command_line(args.words)
    if name == "run":
        # Before anything is made: no supervisor is the one-line error, and no pod is left.
        from jetpack.cli.client import ControlClient

        ControlClient(ctx.config["supervisor.socket"]).request_sync("GET", "/v1/ping",
                                                                   timeout=10)
    if name == "run" and len(options.apps) == 1 and extra["manifest"] is None:
        existing = _existing_pod(ctx, options.apps[0].image)
        if existing is not None:
            return _run_foreground(ctx, images, existing, rm=extra["rm"], tty=extra["tty"])
    if extra["manifest"] is not None:
        from pathlib import Path

        text = sys.stdin.read() if extra["manifest"] == "-" else \
            Path(extra["manifest"]).read_text()
        options = options_from_manifest(text, options)
    pod = prepare_pod(ctx.config, ctx.state, FetchingImages(ctx, images), options)
    for warning in pod.options.isolator_warnings:
        print(f"jetpack: warning: {warning}", file=sys.stderr)
    if name == "prepare":
        print(pod.uuid)
        return 0
    from jetpack.cli.client import NoSupervisorError

    try:
        return _run_foreground(ctx, images, pod.uuid, rm=extra["rm"], tty=extra["tty"])
    except NoSupervisorError:
        # The supervisor went away between the check above and the run request: the pod
        # made for this run never started; it goes.
        from jetpack.store.lifecycle import destroy_pod
        from jetpack.store.pods import PodStore

        destroy_pod(ctx.config, ctx.state, images, PodStore(ctx.state).get(pod.uuid),
                    stop_through_supervisor(ctx))
        raise


class FetchingImages:
    """The image store, fetching (discovery, signature checked) an image named but missing,
    as ``jetpack fetch NAME`` would with ``--pull=new``."""

    def __init__(self, ctx: Context, images: Any) -> None:
        self.ctx = ctx
        self.images = images

    def resolve_image(self, ref: str, labels: dict[str, str] | None = None) -> Any:
        from jetpack.errors import NotFoundError

        try:
            return self.images.resolve_image(ref, labels)
        except NotFoundError:
            if ref.startswith("sha512-") or "@" in ref or "/" not in ref:
                raise
        import trio

        from jetpack.fetch import Fetcher, Insecure

        print(f"jetpack: {ref} is not in the store; fetching it", file=sys.stderr)
        fetcher = Fetcher(self.ctx.config, self.images,
                          insecure=Insecure.parse(self.ctx.config["images.insecure"]))
        wanted = ref + "".join(f",{k}={v}" for k, v in (labels or {}).items())
        record = trio.run(fetcher.fetch, wanted, "new")
        return self.images.resolve_image(record.id)

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str:
        return str(self.images.clone_for_app(image_id, pod_uuid, app))

    def destroy_pod_clones(self, pod_uuid: str) -> None:
        self.images.destroy_pod_clones(pod_uuid)


def stop_through_supervisor(ctx: Context) -> Any:
    from jetpack.cli.client import ControlClient
    from jetpack.store.pods import PodRecord

    client = ControlClient(ctx.config.path("supervisor.socket"))

    def stop(pod: PodRecord) -> None:
        client.request_sync("POST", f"/v1/pods/{pod.uuid}/stop", timeout=None)

    return stop


def _existing_pod(ctx: Context, ref: str) -> str | None:
    """``run POD`` when the word names a prepared pod rather than an image."""
    from jetpack.errors import JetpackError
    from jetpack.store.pods import PodStore

    try:
        return PodStore(ctx.state).resolve(ref).uuid
    except JetpackError:
        return None


def _run_foreground(ctx: Context, images: Any, pod_uuid: str, *, rm: bool, tty: bool) -> int:
    """Run the pod through the supervisor, print every app's output as it comes, return the
    exit status: one ``POST /v1/pods/{pod}/run`` request (``run -t``: the terminal path)."""
    from jetpack.cli.client import ControlClient
    from jetpack.store.pods import PodStore

    client = ControlClient(ctx.config.path("supervisor.socket"))
    store = PodStore(ctx.state)
    pod = store.get(pod_uuid)
    if tty:
        return _run_terminal(ctx, images, client, store, pod, rm=rm)
    return _follow_run(client.stream_sync("POST", f"/v1/pods/{pod_uuid}/run",
                                          params={"rm": "1"} if rm else None),
                       len(pod.apps) > 1)


def _follow_run(messages: Iterator[dict[str, Any]], prefix: bool) -> int:
    """Print the output messages of a run stream as they come (``prefix``: each line with its
    app's name); the exit status of its final message."""
    import base64

    from jetpack.cli.client import error_from
    from jetpack.errors import SupervisorError

    out = sys.stdout.buffer
    final: dict[str, Any] | None = None
    for message in messages:
        kind = message.get("type")
        if kind == "output":
            data = base64.b64decode(message["data"])
            if prefix:
                data = b"".join(f"{message['app']}| ".encode() + line
                                for line in data.splitlines(keepends=True))
            out.write(data)
            out.flush()
        elif kind == "exit":
            final = message["pod"]
        elif kind == "error":
            raise error_from(message, "the run failed")
    if final is None:
        raise SupervisorError("the supervisor ended the run without the pod's exit")
    return exit_status(final)


def _run_terminal(ctx: Context, images: Any, client: Any, store: Any, pod: Any, *,
                  rm: bool) -> int:
    """``run -t``: the first app gets a pty; this terminal is attached to it."""
    from jetpack.cli.attach import attach_terminal
    from jetpack.errors import PodStartError

    if not pod.options.tty:
        import dataclasses

        with ctx.state.transaction() as tx:
            store.set_options(tx, pod, dataclasses.replace(pod.options, tty=True))
    try:
        client.request_sync("POST", f"/v1/pods/{pod.uuid}/start", timeout=None)
    except PodStartError:
        if rm:
            from jetpack.store.lifecycle import destroy_pod

            destroy_pod(ctx.config, ctx.state, images, store.get(pod.uuid),
                        stop_through_supervisor(ctx))
        raise
    final = attach_terminal(str(ctx.config.path("supervisor.socket")), pod.uuid, None)
    if final is None:
        return 0  # detached: the pod goes on
    if not final:
        final = client.request_sync("GET", f"/v1/pods/{pod.uuid}/wait", timeout=None)
    if rm:
        from jetpack.store.lifecycle import destroy_pod

        destroy_pod(ctx.config, ctx.state, images, store.get(pod.uuid),
                    stop_through_supervisor(ctx))
    return exit_status(final)


def exit_status(pod: dict[str, Any]) -> int:
    """The first non-zero app status (a signal as 128+N, as shells report it), else 0."""
    for app in pod.get("apps", []):
        if app.get("signal"):
            return 128 + int(app["signal"])
        if app.get("exit_status"):
            return int(app["exit_status"])
    if pod.get("state") == "failed":
        return 1
    return 0


# --- the command line: pod and app options, parsed into a store.prepare.PrepareRequest -------

POD_FLAGS = {"--name": 1, "--restart": 1, "-p": 1, "--port": 1, "-v": 1, "--volume": 1,
             "-a": 1, "--annotation": 1, "-f": 1, "--pod-manifest": 1, "--rm": 0, "-t": 0,
             "-i": 0, "--interactive": 0, "--keep-etc": 0}
APP_FLAGS = {"--app-name": 1, "-m": 1, "--mount": 1, "--exec": 1, "--user": 1, "--group": 1,
             "-e": 1, "--env": 1, "--working-dir": 1, "-w": 1}


def parse_command_line(argv: Sequence[str]) -> tuple[PrepareRequest, dict[str, Any]]:
    """Pod options anywhere; app options apply to the image before them. Returns the options
    and the remaining pod-level flags (``--rm``, ``-t``, ``-f``)."""
    from jetpack.store.prepare import PrepareRequest

    request, extra = parse_words(argv)
    return PrepareRequest.from_json(request), extra


def parse_words(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``parse_command_line`` as plain JSON (``PrepareRequest.from_json`` reads it), with
    nothing imported unless a flag needs it: what ``run`` sends the supervisor."""
    options: dict[str, Any] = {"apps": [], "ports": [], "volumes": [], "annotations": {}}
    apps: list[dict[str, Any]] = options["apps"]
    extra: dict[str, Any] = {"rm": False, "tty": False, "manifest": None}
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        split = _split_short_flags(word)
        if split is not None:
            words[i:i + 1] = split
            word = words[i]
        flag, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in POD_FLAGS or flag in APP_FLAGS:
            arity = POD_FLAGS.get(flag, APP_FLAGS.get(flag, 0))
            if arity and not eq:
                if i + 1 >= len(words):
                    raise UsageError(f"{flag} needs a value")
                value = words[i + 1]
                i += 2
            else:
                value = inline
                i += 1
            if flag in APP_FLAGS and not apps:
                raise UsageError(f"{flag} applies to an image: put it after the image")
            if flag == "--name":
                options["name"] = value
            elif flag == "--restart":
                from jetpack.store.restart import RestartPolicy

                options["restart"] = str(RestartPolicy.parse(value))
            elif flag in ("-p", "--port"):
                options["ports"].append(parse_port(value))
            elif flag in ("-v", "--volume"):
                from jetpack.appc import parse_volume_arg

                options["volumes"].append(parse_volume_arg(value).to_dict())
            elif flag in ("-a", "--annotation"):
                key, sep, val = value.partition("=")
                if not sep or not key:
                    raise UsageError(f"-a {value}: expected KEY=VALUE")
                options["annotations"][key] = val
            elif flag in ("-f", "--pod-manifest"):
                extra["manifest"] = value
            elif flag == "--rm":
                extra["rm"] = True
            elif flag in ("-t", "-i", "--interactive"):
                extra["tty"] = True
            elif flag == "--keep-etc":
                options["keep_image_etc"] = True
            elif apps:
                _set_app_flag(apps[-1], flag, value)
            continue
        if word == "--":
            if not apps:
                raise UsageError("-- must follow an image: it starts that app's arguments")
            apps[-1]["exec"] = words[i + 1:]
            break
        if word.startswith("-") and word != "-":
            raise UsageError(f"unknown option {word}")
        apps.append({"image": word, "environment": {}, "mounts": []})
        i += 1
    return options, extra


def _split_short_flags(word: str) -> list[str] | None:
    """``-it`` as ``-i -t``, ``-eNAME=V`` as ``-e NAME=V`` (getopt's rules: flags without a
    value first; a flag that takes one takes the rest of the word); None when ``word`` is not
    such a group."""
    if len(word) < 3 or word[0] != "-" or word[1] == "-":
        return None
    out = []
    for at, letter in enumerate(word[1:], start=1):
        flag = f"-{letter}"
        arity = POD_FLAGS.get(flag, APP_FLAGS.get(flag))
        if arity is None:
            return None  # not ours: refused below as an unknown option
        out.append(flag)
        if arity:
            rest = word[at + 1:]
            return out + ([rest] if rest else [])
    return out


def _set_app_flag(app: dict[str, Any], flag: str, value: str) -> None:
    if flag == "--app-name":
        app["name"] = value
    elif flag in ("-m", "--mount"):
        app["mounts"].append(list(parse_mount(value)))
    elif flag == "--exec":
        import shlex

        try:
            app["exec"] = shlex.split(value)
        except ValueError as exc:
            raise UsageError(f"--exec {value!r}: {exc}") from None
    elif flag == "--user":
        app["user"] = value
    elif flag == "--group":
        app["group"] = value
    elif flag in ("-e", "--env"):
        key, val = parse_env(value)
        app["environment"][key] = val
    elif flag in ("-w", "--working-dir"):
        app["working_directory"] = value


def parse_port(text: str) -> dict[str, Any]:
    """``NAME:HOSTPORT`` or ``NAME:HOSTIP:HOSTPORT`` (as ``PrepareRequest.from_json`` reads a
    port)."""
    parts = text.split(":")
    try:
        if len(parts) == 2:
            return {"name": parts[0], "host_port": _port(parts[1])}
        if len(parts) == 3:
            return {"name": parts[0], "host_port": _port(parts[2]), "host_ip": parts[1]}
    except ValueError as exc:
        raise UsageError(f"-p {text}: {exc}") from None
    raise UsageError(f"-p {text}: expected NAME:HOSTPORT")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise UsageError(f"-e {text}: expected NAME=VALUE with a valid variable name")
    return name, value


def parse_mount(text: str) -> tuple[str, str | None, bool]:
    volume, _, target = text.partition(":")
    if not volume:
        raise UsageError(f"-m {text}: expected VOLUME[:MOUNTPOINT]")
    return volume, target or None, False
