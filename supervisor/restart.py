"""Restart policies (never, on-failure[:N], always) and the exponential backoff between restarts.

Pure logic with no clock of its own: the pod task asks ``next_delay`` with the app's uptime, so
the rules are tested exactly under trio's virtual clock.
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


@dataclass
class Backoff:
    """Docker-like backoff: ``initial`` doubling to ``cap``; an app that stayed up at least
    ``reset_after`` seconds starts again from ``initial``."""

    initial: float = 0.1
    cap: float = 60.0
    reset_after: float = 10.0
    _current: float = 0.0

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.reset_after or self._current == 0.0:
            self._current = self.initial
        else:
            self._current = min(self._current * 2, self.cap)
        return self._current

    def reset(self) -> None:
        self._current = 0.0
