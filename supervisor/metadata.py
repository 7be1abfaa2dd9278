"""The metadata service's view of running pods: the PodDirectory the MDS asks, built from the
pod manager's in-memory state (each pod's entry once, then served from memory).

Building an entry reads the image manifests from the state database: in a worker thread, under
the manager's database limiter, never on the loop thread.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from jetpack.mds.service import AppMetadata, PodMetadata
from jetpack.mds.tokens import pod_token
from jetpack.store.pods import PodRecord
from jetpack.supervisor.pods import PodManager


class ManagerDirectory:
    """Answers ``pod_by_address`` for pods the manager runs; forgets pods that stopped."""

    def __init__(self, manager: PodManager, token_key: bytes) -> None:
        self.manager = manager
        self.token_key = token_key
        self._cache: dict[str, PodMetadata] = {}

    def token(self, pod_uuid: str) -> str:
        return pod_token(self.token_key, pod_uuid)

    async def pod_by_address(self, address: str) -> PodMetadata | None:
        for uuid, task in list(self.manager.tasks.items()):
            if task.pod.ip == address:
                cached = self._cache.get(uuid)
                if cached is None:
                    cached = await self.manager.in_db_thread(partial(self._build, task.pod))
                    self._cache[uuid] = cached
                return cached
        for uuid in [u for u in self._cache if u not in self.manager.tasks]:
            del self._cache[uuid]
        return None

    def _build(self, pod: PodRecord) -> PodMetadata:
        """The pod's entry (runs in the database thread)."""
        manifest: dict[str, Any] = json.loads(pod.manifest)
        apps: dict[str, AppMetadata] = {}
        for app in manifest.get("apps", []):
            image_id = app["image"]["id"]
            rows = self.manager.db.query("SELECT manifest FROM images WHERE id = ?", (image_id,))
            image_manifest = rows[0]["manifest"] if rows else "{}"
            annotations = {a["name"]: a["value"]
                           for a in json.loads(image_manifest).get("annotations", [])}
            annotations.update({a["name"]: a["value"] for a in app.get("annotations", [])})
            apps[app["name"]] = AppMetadata(
                image_id=image_id, image_manifest=image_manifest,
                annotations=[{"name": k, "value": v} for k, v in annotations.items()],
            )
        return PodMetadata(uuid=pod.uuid, token=self.token(pod.uuid), manifest=pod.manifest,
                           annotations=manifest.get("annotations", []), apps=apps)
