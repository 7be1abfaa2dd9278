"""Restart policies: never, on-failure[:N] (N restarts at most), always.

Stored with each pod at prepare time; the supervisor applies them (jetpack.supervisor.backoff).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from jetpack.errors import UsageError

PolicyKind = Literal["never", "on-failure", "always"]
_POLICY = re.compile(r"^(never|always|on-failure)(?::(\d+))?$")


@dataclass(frozen=True)
class RestartPolicy:
    """When an exited app is started again. ``max_restarts`` None means unbounded."""

    kind: PolicyKind = "never"
    max_restarts: int | None = None

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        match = _POLICY.match(text.strip())
        if not match or (match.group(2) is not None and match.group(1) != "on-failure"):
            raise UsageError(
                f"bad restart policy {text!r}: expected never, on-failure[:N] or always"
            )
        kind: PolicyKind = match.group(1)  # type: ignore[assignment]  # the regex admits only these
        limit = int(match.group(2)) if match.group(2) is not None else None
        return cls(kind, limit)

    def __str__(self) -> str:
        if self.kind == "on-failure" and self.max_restarts is not None:
            return f"on-failure:{self.max_restarts}"
        return self.kind

    def wants_restart(self, *, failed: bool, restarts_so_far: int) -> bool:
        """Whether an app that just exited (``failed``: non-zero or killed) runs again."""
        if self.kind == "never" or (self.kind == "on-failure" and not failed):
            return False
        return self.max_restarts is None or restarts_so_far < self.max_restarts
