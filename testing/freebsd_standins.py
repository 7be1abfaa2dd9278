"""Stand-ins for FreeBSD's jail, jexec, jls, mount_nullfs and umount, installed for one test.

``install`` writes a wrapper per tool into ``bin_dir`` that carries the state directory, so a
tool run with a clean environment (jexec runs with the app's exact one) still finds its state.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

STANDINS = Path(__file__).resolve().parent / "standins"
TOOLS = ("jail", "jexec", "jls", "mount_nullfs", "umount")


def install(bin_dir: Path, state_dir: Path) -> Path:
    """Wrappers for every stand-in in ``bin_dir``; put it first on PATH. Returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        wrapper = bin_dir / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            f"JETPACK_STANDIN_STATE={shlex.quote(str(state_dir))} "
            f"exec {shlex.quote(sys.executable)} {shlex.quote(str(STANDINS / tool))} \"$@\"\n"
        )
        wrapper.chmod(0o755)
    return bin_dir
