"""The contents of a pod's /etc/resolv.conf and /etc/hosts.

Pure functions of the configuration and the host's resolv.conf; the isolation drivers write
them into each app's rootfs (``write_etc_files``) from the sandbox spec's ``etc_files``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from jetpack.config import Config
from jetpack.errors import IsolationError
from jetpack.stage2.paths import write_file_in_root

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved keeps the real upstream servers here when /etc/resolv.conf names 127.0.0.53.
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", maxsplit=1)[0]).is_loopback
    except ValueError:
        return False


def _usable_lines(text: str) -> tuple[list[str], int]:
    """Lines of a resolv.conf a pod can use, and how many nameservers they hold."""
    lines, servers = [], 0
    for raw in text.splitlines():
        line = raw.strip()
        fields = line.split()
        if not fields or line.startswith(("#", ";")):
            continue
        if fields[0] == "nameserver":
            # A loopback resolver (127.0.0.53, ::1) is the host's, unreachable from the pod's
            # own network namespace: it would only make every lookup time out.
            if len(fields) < 2 or _is_loopback(fields[1]):
                continue
            servers += 1
        lines.append(line)
    return lines, servers


def pod_resolv_conf(
    config: Config,
    *,
    host_resolv_conf: Path = HOST_RESOLV_CONF,
    resolved_upstream: Path = RESOLVED_UPSTREAM,
) -> str:
    """resolv.conf for a pod: ``ace.dns-servers`` when set, else the host's usable lines."""
    servers = [s for s in re.split(r"[\s,]+", config.get("ace.dns-servers")) if s]
    if servers:
        return "".join(f"nameserver {server}\n" for server in servers)
    for source in (host_resolv_conf, resolved_upstream):
        try:
            lines, count = _usable_lines(source.read_text(errors="replace"))
        except OSError:
            continue
        if count:
            return "".join(f"{line}\n" for line in lines)
    return "# jetpack: the host has no nameserver a pod can reach; set ace.dns-servers\n"


def pod_hosts(name: str, ip: str | None) -> str:
    """/etc/hosts naming the pod (``name``) at its address (loopback while it has none)."""
    own = ip if ip else "127.0.1.1"
    return (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{own}\t{name}\n"
    )


def write_etc_files(rootfs: Path, files: dict[str, str], *, app: str) -> None:
    """Each ``/etc/<name>`` in the app's rootfs (its own clone), synchronously.

    /etc is resolved inside the rootfs (an image's ``etc -> /somewhere`` leads to the rootfs's
    own /somewhere, never the host's) and each file is renamed over whatever is there, a symlink
    included, never written through it."""
    for name, text in files.items():
        try:
            write_file_in_root(rootfs, f"/etc/{name}", text.encode())
        except OSError as exc:
            raise IsolationError(f"app {app}: cannot write /etc/{name} in {rootfs}: "
                                 f"{exc.strerror}") from None
