"""How an app ended, as every layer records it: an exit code or the signal that killed it.

Written as JSON by the process that watched the app, read by the driver and the supervisor.
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
    failed: str | None = None  # set when stage1/stage2 failed before or around the app

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
