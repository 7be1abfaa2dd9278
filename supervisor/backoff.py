"""The exponential backoff between restarts (policies: jetpack.store.restart).

Pure logic with no clock of its own: the pod task asks ``next_delay`` with the app's uptime, so
the rules are tested exactly under trio's virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from jetpack.store.restart import RestartPolicy

__all__ = ["Backoff", "RestartPolicy"]

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
