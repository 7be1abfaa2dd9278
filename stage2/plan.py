"""The fully resolved execution of one app: credentials, environment, working directory, argv.

Built from outside the rootfs before stage1 pivots into it (no Python lives in an app's rootfs),
then carried as JSON to the process that execs the app.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetpack.errors import IsolationError
from jetpack.stage2.credentials import Credentials, resolve_credentials
from jetpack.stage2.paths import resolve_in_root

# ace.md "Execution Environment": exactly this PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# ace.md: "container" names the executor, free-form.
CONTAINER = "jetpack"


def app_environment(
    app_name: str, metadata_url: str, environment: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """The spec's required variables, then the app's own (which may override all but
    AC_APP_NAME and AC_METADATA_URL, which identify the app to the metadata service)."""
    env = {"PATH": DEFAULT_PATH, "container": CONTAINER}
    env.update(environment)
    env["AC_APP_NAME"] = app_name
    env["AC_METADATA_URL"] = metadata_url.rstrip("/")
    return env


@dataclass(frozen=True)
class ExecPlan:
    """What stage2 runs for one app, in order: pre-start handlers, the app, post-stop handlers.

    A distinct idea from stage1's ``AppSpec`` (what the pod store keeps, as the image says it):
    this is that spec resolved against the app's rootfs (uid/gid and groups looked up, the
    environment and ``PATH`` completed, the argv's program found)."""

    app_name: str
    argv: tuple[str, ...]
    credentials: Credentials
    working_directory: str
    environment: Mapping[str, str]
    pre_start: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    # socket-activated ports of the app (not of its handlers): (protocol, port, count)
    listen: tuple[tuple[str, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        c = self.credentials
        return {
            "app_name": self.app_name,
            "argv": list(self.argv),
            "uid": c.uid,
            "gid": c.gid,
            "groups": list(c.groups),
            "working_directory": self.working_directory,
            "environment": dict(self.environment),
            "pre_start": [list(h) for h in self.pre_start],
            "post_stop": [list(h) for h in self.post_stop],
            "listen": [list(port) for port in self.listen],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecPlan:
        return cls(
            app_name=data["app_name"],
            argv=tuple(data["argv"]),
            credentials=Credentials(data["uid"], data["gid"], tuple(data["groups"])),
            working_directory=data["working_directory"],
            environment=dict(data["environment"]),
            pre_start=tuple(tuple(h) for h in data["pre_start"]),
            post_stop=tuple(tuple(h) for h in data["post_stop"]),
            listen=tuple((str(p), int(n), int(c)) for p, n, c in data.get("listen") or ()),
        )


def check_working_directory(rootfs: Path, working_directory: str) -> str:
    if not working_directory.startswith("/"):
        raise IsolationError(
            f"working directory {working_directory!r} must be an absolute path"
        )
    if not resolve_in_root(rootfs, working_directory).is_dir():
        raise IsolationError(
            f"working directory {working_directory} does not exist in the app's rootfs",
            hint="create it in the image or choose another workingDirectory",
        )
    return working_directory


def plan_app(
    *,
    app_name: str,
    rootfs: Path,
    argv: Iterable[str],
    user: str,
    group: str,
    supplementary_gids: tuple[int, ...],
    working_directory: str,
    environment: Iterable[tuple[str, str]],
    metadata_url: str,
    pre_start: tuple[tuple[str, ...], ...] = (),
    post_stop: tuple[tuple[str, ...], ...] = (),
    listen: tuple[tuple[str, int, int], ...] = (),
) -> ExecPlan:
    """Resolve everything the app needs from its rootfs; raises IsolationError naming the fault."""
    argv = tuple(argv)
    if not argv:
        raise IsolationError(f"app {app_name}: nothing to execute (empty exec)")
    return ExecPlan(
        app_name=app_name,
        argv=argv,
        credentials=resolve_credentials(rootfs, user, group, supplementary_gids),
        working_directory=check_working_directory(rootfs, working_directory or "/"),
        environment=app_environment(app_name, metadata_url, environment),
        pre_start=pre_start,
        post_stop=post_stop,
        listen=listen,
    )
