"""Restart policies and backoff, exact under trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from jetpack.errors import UsageError
from jetpack.supervisor.backoff import Backoff, RestartPolicy


@pytest.mark.parametrize(
    ("text", "kind", "limit"),
    [("never", "never", None), ("always", "always", None), ("on-failure", "on-failure", None),
     ("on-failure:3", "on-failure", 3), (" on-failure:0 ", "on-failure", 0)],
)
def test_parse(text: str, kind: str, limit: int | None) -> None:
    policy = RestartPolicy.parse(text)
    assert (policy.kind, policy.max_restarts) == (kind, limit)
    assert RestartPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1", ""])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="restart policy"):
        RestartPolicy.parse(text)


def test_decisions() -> None:
    never, always = RestartPolicy("never"), RestartPolicy("always")
    on3 = RestartPolicy("on-failure", 3)
    assert not never.wants_restart(failed=True, restarts_so_far=0)
    assert always.wants_restart(failed=False, restarts_so_far=1000)
    assert not on3.wants_restart(failed=False, restarts_so_far=0)
    assert [on3.wants_restart(failed=True, restarts_so_far=n) for n in range(5)] == [
        True, True, True, False, False
    ]


def test_backoff_doubles_to_cap_and_resets() -> None:
    backoff = Backoff(initial=0.1, cap=1.0, reset_after=10.0)
    delays = [backoff.next_delay(uptime=0.5) for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.next_delay(uptime=10.0) == pytest.approx(0.1)
    assert backoff.next_delay(uptime=0.0) == pytest.approx(0.2)


async def test_restart_loop_timing_under_virtual_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An app failing at once under on-failure:3 restarts at 0.1, 0.3 and 0.7 s, then stops."""
    policy = RestartPolicy.parse("on-failure:3")
    backoff = Backoff(initial=0.1, cap=60, reset_after=10)
    starts: list[float] = []
    restarts = 0
    while True:
        starts.append(trio.current_time())
        await trio.lowlevel.checkpoint()  # the app runs and fails immediately
        if not policy.wants_restart(failed=True, restarts_so_far=restarts):
            break
        await trio.sleep(backoff.next_delay(uptime=0.0))
        restarts += 1
    assert restarts == 3
    assert [round(t - starts[0], 6) for t in starts] == [0.0, 0.1, 0.3, 0.7]
