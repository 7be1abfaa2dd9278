"""User and group of an app, resolved from its rootfs's /etc/passwd and /etc/group (appc rules).

``user``/``group`` are a name, a number, or ``/path`` meaning the owner of that path in the rootfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jetpack.errors import IsolationError
from jetpack.stage2.paths import resolve_in_root


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary GIDs, exactly these (root's own are dropped)


def _read_table(rootfs: Path, name: str) -> list[list[str]]:
    path = resolve_in_root(rootfs, f"/etc/{name}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise IsolationError(f"cannot read /etc/{name} in {rootfs}: {exc.strerror}") from None
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _owner(rootfs: Path, path: str, what: str) -> os.stat_result:
    try:
        return resolve_in_root(rootfs, path).stat()
    except OSError:
        raise IsolationError(
            f"{what} {path!r}: no such path in the app's rootfs to take its owner from"
        ) from None


def resolve_user(rootfs: Path, user: str) -> int:
    if user.isdigit():
        return int(user)
    if user.startswith("/"):
        return _owner(rootfs, user, "user").st_uid
    for entry in _read_table(rootfs, "passwd"):
        if len(entry) >= 4 and entry[0] == user and entry[2].isdigit():
            return int(entry[2])
    raise IsolationError(f"user {user!r} is not in the app's /etc/passwd",
                         hint="use a numeric uid or add the user to the image")


def resolve_group(rootfs: Path, group: str) -> int:
    if group.isdigit():
        return int(group)
    if group.startswith("/"):
        return _owner(rootfs, group, "group").st_gid
    for entry in _read_table(rootfs, "group"):
        if len(entry) >= 3 and entry[0] == group and entry[2].isdigit():
            return int(entry[2])
    raise IsolationError(f"group {group!r} is not in the app's /etc/group",
                         hint="use a numeric gid or add the group to the image")


def user_name(rootfs: Path, uid: int) -> str | None:
    """The passwd name of ``uid`` in the rootfs (jexec -U needs a name)."""
    for entry in _read_table(rootfs, "passwd"):
        if len(entry) >= 4 and entry[2] == str(uid):
            return entry[0]
    return None


def resolve_credentials(
    rootfs: Path, user: str, group: str, supplementary_gids: tuple[int, ...] = ()
) -> Credentials:
    return Credentials(
        resolve_user(rootfs, user), resolve_group(rootfs, group), tuple(supplementary_gids)
    )
