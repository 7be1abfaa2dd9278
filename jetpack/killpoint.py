"""Named kill points for the crash-consistency tests: ``killpoint("prepare.cloned")`` SIGKILLs
its own process when ``$JETPACK_KILLPOINT`` names that point, and does nothing otherwise.

The variable is read once, at import; a point not named costs one string comparison. Every
name is listed in ``KILLPOINTS`` (tests/test_crash_consistency.py checks the list against the
calls, both ways). Names read ``operation.step``: the process dies right after that step.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "JETPACK_KILLPOINT"
_ARMED = os.environ.get(ENV_VAR, "")

KILLPOINTS = (
    # prepare (CLI): clones made, then the row
    "prepare.cloned",
    "prepare.recorded",
    # start (supervisor): the transition, each resource of the sandbox, the apps
    "start.starting-recorded",
    "start.sandbox-dirs",
    "start.cgroup",
    "start.namespaces",
    "start.network",
    "start.sandbox-created",
    "start.sandbox-recorded",
    "start.rootfs-mounted",
    "start.app-spawned",
    "start.app-recorded",
    "start.running-recorded",
    # stop (supervisor): the transition, each app, the teardown, the record
    "stop.stopping-recorded",
    "stop.app-stopped",
    "stop.final-recorded",
    "stop.network-detached",
    "stop.processes-killed",
    "stop.namespaces-removed",
    "stop.sandbox-destroyed",
    # destroy (CLI): the row, then the clones
    "destroy.deleted",
    # import (CLI): extracted into staging, sealed, then the row
    "import.extracted",
    "import.sealed",
    # build (CLI): the build's tree, then the import of its result
    "build.tree",
    "build.written",
    # gc (CLI): each pod removed
    "gc.pod-removed",
)


def killpoint(name: str) -> None:
    """Die by SIGKILL here when ``$JETPACK_KILLPOINT`` is ``name``."""
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
