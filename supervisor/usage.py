"""What a running pod uses now (memory), where the API answers pod objects: read through the
isolation driver's seam (``stage1.drivers.pod_usage``: the pod cgroup on Linux, ``rctl -u`` on
the pod jail), from the sandbox handle the supervisor holds for each running pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import trio

from jetpack.store.pods import PodRecord


def memory_bytes(sandbox: Mapping[str, Any] | None) -> int | None:
    """Bytes charged to the pod (page cache included, as ``docker stats`` counts before its cache
    adjustment); None where unknown (no sandbox, a driver that cannot tell)."""
    if not sandbox:
        return None
    from jetpack.errors import JetpackError
    from jetpack.stage1.base import SandboxHandle
    from jetpack.stage1.drivers import pod_usage

    try:
        usage = pod_usage(SandboxHandle.from_json(dict(sandbox)))
    except JetpackError:
        return None
    return usage.memory_bytes if usage is not None else None


async def pods_with_usage(pods: Iterable[PodRecord],
                          sandboxes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each pod's JSON object, with ``memory_bytes`` (null unless the pod is running);
    ``sandboxes``: the sandbox handles of running pods, by uuid."""

    def read() -> list[dict[str, Any]]:
        objects = []
        for pod in pods:
            obj = pod.to_json_obj()
            obj["memory_bytes"] = (memory_bytes(sandboxes.get(pod.uuid))
                                   if pod.state == "running" else None)
            objects.append(obj)
        return objects

    return await trio.to_thread.run_sync(read)
