"""Work that changes the calling thread's namespaces, run in a thread of its own.

setns(2) and unshare(2) of uts/ipc/net (and the bind mounts that pin what they made) apply to
the calling thread only. A thread that exists for the one piece of work and ends with it means
no reused thread (trio's workers, the caller's) ever runs in a pod's namespaces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def in_own_thread(work: Callable[[], T], name: str) -> T:
    """``work()`` in a new thread that ends with it; its exception is raised here."""
    return Beside(work, name).result()


class Beside(Generic[T]):
    """``work()`` started now in a new thread (in the starting thread's namespaces, as every
    thread it creates is), while the caller goes on; ``result()`` waits for it and returns its
    value or raises its exception. A caller that leaves early still calls ``result()`` (or
    ``join()``) in a ``finally``: nothing it started outlives it."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._outcome: list[T] = []
        self._failure: list[BaseException] = []

        def body() -> None:
            try:
                self._outcome.append(work())
            except BaseException as exc:  # noqa: BLE001  # re-raised by result()
                self._failure.append(exc)

        self._thread = threading.Thread(target=body, name=name)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        return self._outcome[0]
