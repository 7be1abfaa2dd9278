"""A short soak: 20 pod cycles of every kind (restart policy firing, port forward, volumes,
isolators, exec, logs) with an events follower connected throughout leave nothing behind
(bench/soak.py runs the long one)."""

from __future__ import annotations

from soaking import Soak

from podhost import Host


def test_twenty_mixed_cycles_leave_nothing_behind(host: Host) -> None:
    host.start()
    soak = Soak(host, log=lambda line: None)
    follower = soak.run(20, every=10)
    assert [row.cycle for row in soak.rows] == [0, 10, 20]
    assert soak.leaks(follower) == []
    # the follower saw the whole run: at least every pod's creation and destruction
    assert follower.received >= 2 * 20
