"""Running the host's network and limit tools (ip, nft, sysctl, ifconfig, pfctl, rctl).

A failure becomes a jetpack error naming the command and its stderr; nothing else escapes.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from jetpack.errors import JetpackError, NetworkError
from jetpack.tools import missing_tool


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    error: type[JetpackError] = NetworkError,
    timeout: float = 60,
) -> str:
    """Run ``argv``, return its stdout; raise ``error`` naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise missing_tool(argv[0], error) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{shlex.join(argv)}: {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise error(f"{shlex.join(argv)} failed: {detail}")
    return proc.stdout
