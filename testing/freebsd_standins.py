"""Stand-ins for FreeBSD's jail, jexec, jls, mount, mount_nullfs, umount, ifconfig, pfctl, rctl,
sysctl, devfs and ps, installed for one test, and the stand-in for jail_attach(2).

``install`` writes a wrapper per tool into ``bin_dir`` that carries the state directory, so a
tool run with a clean environment still finds its state. The tools share one state (see
standins/standin_state.py): jails with their processes, one mount table, the kernel's knobs.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from types import ModuleType

STANDINS = Path(__file__).resolve().parent / "standins"
TOOLS = ("jail", "jexec", "jls", "mount", "mount_nullfs", "umount", "ifconfig", "pfctl",
         "rctl", "sysctl", "devfs", "ps")
STATE_ENV = "JETPACK_STANDIN_STATE"


def install(bin_dir: Path, state_dir: Path) -> Path:
    """Wrappers for every stand-in in ``bin_dir``; put it first on PATH. Returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        wrapper = bin_dir / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            f"{STATE_ENV}={shlex.quote(str(state_dir))} "
            f"exec {shlex.quote(sys.executable)} {shlex.quote(str(STANDINS / tool))} \"$@\"\n"
        )
        wrapper.chmod(0o755)
    return bin_dir


def set_sysctl(state_dir: Path, name: str, value: str) -> None:
    """Set a stand-in kernel value, e.g. ``kern.racct.enable`` to ``0`` (racct disabled)."""
    path = state_dir / "sysctl.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    values[name] = value
    path.write_text(json.dumps(values))


def set_pf_loaded(state_dir: Path, loaded: bool) -> None:
    """Load or unload the stand-in pf (without it, pfctl fails on /dev/pf)."""
    marker = state_dir / "pf.absent"
    if loaded:
        marker.unlink(missing_ok=True)
    else:
        marker.touch()


def set_pf_enabled(state_dir: Path, enabled: bool) -> None:
    """Enable or disable the stand-in pf, as ``pfctl -e`` / ``pfctl -d`` would (loaded pf
    starts disabled on FreeBSD until pfctl -e or rc.d/pf enables it)."""
    marker = state_dir / "pf.disabled"
    if enabled:
        marker.unlink(missing_ok=True)
    else:
        marker.touch()


def set_devfs_rulesets(state_dir: Path, rulesets: list[str]) -> None:
    """The devfs rulesets the stand-in kernel has loaded (default: 1-4 of
    /etc/defaults/devfs.rules); ``devfs rule -s N show`` prints nothing for the others."""
    (state_dir / "devfs.rulesets").write_text(" ".join(rulesets) + "\n")


def _state_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("standin_state", STANDINS / "standin_state.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attach(state_dir: Path, jid: int) -> None:
    """jail_attach(2) for the stand-in jails: the calling process is recorded as in jail
    ``jid`` (so ``jail -r`` kills it and ``ps -J`` lists it) and, as the syscall does, its
    root and current directory become the jail's path. EINVAL for a jail that does not exist
    (jail_attach(2), ERRORS)."""
    state = _state_module()
    with state.state(state_dir) as data:
        found = state.find_jail(data, str(jid))
        if found is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        state.add_process(data["jails"][found["name"]], os.getpid())
        path = found["params"]["path"]
    os.chroot(path)
    os.chdir("/")
