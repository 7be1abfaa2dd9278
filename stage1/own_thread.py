"""Work that changes the calling thread's namespaces, run in a thread of its own.

setns(2) and unshare(2) of uts/ipc/net (and the bind mounts that pin what they made) apply to
the calling thread only. A thread that exists for the one piece of work and ends with it means
no reused thread (trio's workers, the caller's) ever runs in a pod's namespaces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_own_thread(work: Callable[[], T], name: str) -> T:
    """``work()`` in a new thread that ends with it; its exception is raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001  # re-raised in the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
