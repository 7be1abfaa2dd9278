"""How an app ended, as every layer records it: an exit code or the signal that killed it.

The one ``ExitStatus``: written as JSON by the process that watched the app (the status file),
read by the driver, recorded by the supervisor (``app.exited`` events) and by ``jetpack build``.
"""

from __future__ import annotations

import os
import signal as signals
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExitStatus:
    """How an app ended: an exit ``code`` or the ``signal`` that killed it (exactly one is set)."""

    code: int | None = None
    signal: int | None = None
    failed: str | None = None  # why stage1/stage2 failed before or around the app, if they did

    @property
    def succeeded(self) -> bool:
        """Exit code 0 (a restart policy's "success"); a signal or any other code is a failure."""
        return self.code == 0

    def payload(self) -> dict[str, Any]:
        """The status as an ``app.exited`` event records it (the failure reason included)."""
        result: dict[str, Any] = (
            {"signal": self.signal} if self.signal is not None
            else {"exit_status": self.code if self.code is not None else -1})
        if self.failed:
            result["reason"] = self.failed
        return result

    def to_json(self) -> dict[str, Any]:
        if self.signal is not None:
            result: dict[str, Any] = {"signal": self.signal}
        else:
            result = {"exit_status": self.code}
        if self.failed:
            result["failed"] = self.failed
        return result

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExitStatus:
        failed = data.get("failed")
        if data.get("signal") is not None:
            return cls(signal=int(data["signal"]), failed=failed)
        return cls(code=int(data["exit_status"]), failed=failed)

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.WEXITSTATUS(status))

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by {signals.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exited {self.code}"
