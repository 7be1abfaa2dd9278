"""What a running pod uses now (memory), read from the host's accounting where the API answers
pod objects: the pod cgroup on Linux; FreeBSD's ``rctl -u`` is not read yet (the field is null).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from jetpack.hostinfo import platform_kind
from jetpack.store.pods import PodRecord


def memory_bytes(pod_uuid: str) -> int | None:
    """Bytes charged to the pod's memory cgroup (page cache included, as ``docker stats`` counts
    before its cache adjustment); None where unknown (no cgroup, another platform)."""
    if platform_kind() != "linux":
        return None
    from jetpack.errors import IsolationError
    from jetpack.stage1.cgroups import PodCgroup

    try:
        cgroup = PodCgroup.for_pod(pod_uuid)
    except IsolationError:
        return None
    found = cgroup.layout.controller_dir("memory")
    if found is None:
        return None
    root, version = found
    source = root / cgroup.name / ("memory.current" if version == 2 else "memory.usage_in_bytes")
    try:
        return int(source.read_text())
    except (OSError, ValueError):
        return None


async def pods_with_usage(pods: Iterable[PodRecord]) -> list[dict[str, Any]]:
    """Each pod's JSON object, with ``memory_bytes`` (null unless the pod is running)."""

    def read() -> list[dict[str, Any]]:
        objects = []
        for pod in pods:
            obj = pod.to_json_obj()
            obj["memory_bytes"] = memory_bytes(pod.uuid) if pod.state == "running" else None
            objects.append(obj)
        return objects

    return await trio.to_thread.run_sync(read)
