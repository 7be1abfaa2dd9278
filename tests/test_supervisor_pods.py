"""The pod manager's lifecycle rules, exact under trio's virtual clock with the fake runtime."""

from __future__ import annotations

import errno
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from jetpack.config import load_config
from jetpack.errors import ConflictError, PodStartError
from jetpack.state import StateDB, Transaction
from jetpack.store.pods import AppRecord, PodOptions, PodRecord, PodStore, new_uuid
from jetpack.supervisor.pods import PodManager
from jetpack.supervisor.runtime import ExitStatus
from jetpack.testing.fake_runtime import Behaviour, FakeRuntime


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """A virtual clock that jumps only after 50 ms of real idleness: the manager writes the
    database in a worker thread, and a jump must not overtake a write in flight."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    db = StateDB.for_root(tmp_path, create=True)
    with db.transaction() as tx:
        tx.execute("INSERT INTO images (id, name, labels, manifest, size, created, storage)"
                   " VALUES ('sha512-1', 'example.com/app', '{}', '{}', 1, 0, '')")
    return db


def prepare(db: StateDB, name: str, apps: list[str], restart: str = "never") -> PodRecord:
    pod = PodRecord(uuid=new_uuid(), name=name, state="prepared", manifest="{}",
                    options=PodOptions(restart=restart),
                    apps=[AppRecord(app, "sha512-1") for app in apps])
    with db.transaction() as tx:
        PodStore(db).insert(tx, pod)
    return pod


def events(db: StateDB, pod: PodRecord) -> list[tuple[str, str | None, dict[str, object]]]:
    return [(e.type, e.app, dict(e.payload or {})) for e in db.events_since(0) if e.pod == pod.uuid]


class Supervisor:
    def __init__(self, db: StateDB, runtime: FakeRuntime, nursery: trio.Nursery) -> None:
        self.db, self.runtime, self.nursery = db, runtime, nursery

    async def manager(self, *overrides: str) -> PodManager:
        config = load_config(None, ["root.path=/nonexistent", *overrides], environ={})
        manager = PodManager(config, self.db, self.runtime)
        await self.nursery.start(manager.run)
        return manager


@pytest.fixture
async def sup(db: StateDB) -> AsyncIterator[Supervisor]:
    async with trio.open_nursery() as nursery:
        yield Supervisor(db, FakeRuntime(), nursery)
        nursery.cancel_scope.cancel()


async def test_on_failure_3_restarts_three_times_with_growing_delays_then_fails(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["app"] = [Behaviour(runs_for=0.0, code=1)]
    pod = prepare(sup.db, "flaky", ["app"], restart="on-failure:3")
    manager = await sup.manager()
    t0 = trio.current_time()
    await manager.start("flaky")
    final = await manager.wait("flaky")
    assert final.state == "failed"
    starts = [round(t - t0, 6) for t, what, _ in sup.runtime.log if what == "start"]
    assert starts == [0.0, 0.1, 0.3, 0.7]
    log = events(sup.db, pod)
    restarting = [(p["attempt"], p["delay"]) for t, _, p in log if t == "app.restarting"]
    assert restarting == [(1, 0.1), (2, 0.2), (3, 0.4)]
    assert [t for t, _, _ in log if t.startswith("app.")].count("app.exited") == 4
    assert log[-1][0] == "pod.failed"
    assert "restart limit" in str(log[-1][2]["reason"])
    assert final.apps[0].exit_status == 1
    assert final.apps[0].restarts == 3
    await manager.torn_down(pod.uuid)  # wait answers before the teardown ends
    assert sup.runtime.sandboxes == set()  # torn down


async def test_never_policy_records_exit_status(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["app"] = [Behaviour(runs_for=2.0, code=3)]
    pod = prepare(sup.db, "once", ["app"])
    manager = await sup.manager()
    started = await manager.start("once")
    assert started.state == "running"
    assert started.apps[0].state == "running"
    final = await manager.wait(pod.uuid)
    assert final.state == "exited"
    assert final.apps[0].exit_status == 3
    assert [t for t, _, _ in events(sup.db, pod)] == [
        "pod.prepared", "pod.starting", "app.started", "pod.started", "app.exited", "pod.exited"
    ]
    exited = [p for t, _, p in events(sup.db, pod) if t == "app.exited"]
    assert exited == [{"exit_status": 3}]


async def test_pod_runs_until_every_app_has_exited(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script.update(short=[Behaviour(runs_for=1.0)], long=[Behaviour(runs_for=5.0)])
    prepare(sup.db, "two", ["short", "long"])
    manager = await sup.manager()
    t0 = trio.current_time()
    await manager.start("two")
    final = await manager.wait("two")
    assert trio.current_time() - t0 == pytest.approx(5.0)
    assert final.state == "exited"
    assert [a.exit_status for a in final.apps] == [0, 0]


async def test_stop_escalates_to_sigkill_after_grace(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["stubborn"] = [Behaviour(ignores_sigterm=True)]
    sup.runtime.script["polite"] = [Behaviour()]
    pod = prepare(sup.db, "mixed", ["stubborn", "polite"], restart="always")
    manager = await sup.manager("pod.stop-timeout=7s")
    await manager.start("mixed")
    with pytest.raises(ConflictError):
        await manager.start("mixed")
    t0 = trio.current_time()
    final = await manager.stop("mixed")
    assert trio.current_time() - t0 == pytest.approx(7.0)
    assert final.state == "exited"
    signals = {a.name: a.signal for a in final.apps}
    assert signals == {"stubborn": signal.SIGKILL, "polite": signal.SIGTERM}
    types = [t for t, _, _ in events(sup.db, pod)]
    assert "app.restarting" not in types  # a stop is not a failure to restart from
    assert types[-1] == "pod.exited"
    assert sup.runtime.running() == []


async def test_always_restarts_clean_exits_and_resets_backoff(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    # two quick exits, one long run (resets the backoff), one quick exit, then runs forever
    sup.runtime.script["app"] = [Behaviour(runs_for=0.0), Behaviour(runs_for=0.0),
                                 Behaviour(runs_for=20.0), Behaviour(runs_for=0.0), Behaviour()]
    pod = prepare(sup.db, "svc", ["app"], restart="always")
    manager = await sup.manager()
    await manager.start("svc")
    await trio.sleep(30)
    delays = [p["delay"] for t, _, p in events(sup.db, pod) if t == "app.restarting"]
    assert delays == [0.1, 0.2, 0.1, 0.2]
    await manager.stop("svc")


async def test_failed_start_fails_the_pod_and_tears_it_down(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["good"] = [Behaviour()]
    sup.runtime.script["bad"] = [Behaviour(fails_to_start=True)]
    pod = prepare(sup.db, "broken", ["good", "bad"])
    manager = await sup.manager()
    with pytest.raises(PodStartError, match=r"^pod broken failed to start: app bad: "):
        await manager.start("broken")
    final = await manager.wait("broken")  # start raised once the pod was torn down
    assert final.state == "failed"
    assert "bad" in str(events(sup.db, pod)[-1][2]["reason"])
    assert "pod.started" not in [t for t, _, _ in events(sup.db, pod)]  # it never ran
    assert sup.runtime.running() == []
    assert sup.runtime.sandboxes == set()


async def test_sandbox_failure_fails_the_pod(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.fail_sandbox = True
    pod = prepare(sup.db, "nosandbox", ["app"])
    manager = await sup.manager()
    with pytest.raises(PodStartError, match=r"^pod nosandbox failed to start: sandbox: "):
        await manager.start("nosandbox")
    assert PodStore(sup.db).get(pod.uuid).state == "failed"
    assert "sandbox" in str(events(sup.db, pod)[-1][2]["reason"])


@pytest.mark.parametrize(("error", "reason"), [
    (RuntimeError("boom"), "sandbox: RuntimeError: boom"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/gone"),
     "sandbox: FileNotFoundError: [Errno 2] No such file or directory: '/srv/gone'"),
])
async def test_any_sandbox_error_fails_only_that_pod(
    clock: trio.testing.MockClock, sup: Supervisor, error: Exception, reason: str
) -> None:
    steady = prepare(sup.db, "steady", ["steady"])
    broken = prepare(sup.db, "broken", ["app"])
    later = prepare(sup.db, "later", ["later"])
    manager = await sup.manager()
    await manager.start("steady")
    sup.runtime.fail_sandbox = error
    with capture_logs() as logs, pytest.raises(PodStartError) as raised:
        await manager.start("broken")
    assert str(raised.value) == f"pod broken failed to start: {reason}"
    assert events(sup.db, broken)[-1] == ("pod.failed", None, {"reason": reason})
    (logged,) = [e for e in logs if e["event"] == "pod sandbox failed"]
    assert logged["exc_info"] is error  # the traceback goes to the daemon log
    # the supervisor goes on: the running pod is untouched, another pod starts
    sup.runtime.fail_sandbox = False
    assert [p.app for p in sup.runtime.running()] == ["steady"]
    assert (await manager.start("later")).state == "running"
    assert [t for t, _, _ in events(sup.db, later)][-1] == "pod.started"
    assert "pod.failed" not in [t for t, _, _ in events(sup.db, steady)]
    await manager.stop_all()


async def test_app_start_raising_any_error_fails_the_start(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["good"] = [Behaviour()]
    sup.runtime.script["bad"] = [Behaviour(fails_to_start=KeyError("uid"))]
    pod = prepare(sup.db, "keyerr", ["good", "bad"])
    manager = await sup.manager()
    with pytest.raises(PodStartError, match=r"^pod keyerr failed to start: app bad: KeyError"):
        await manager.start("keyerr")
    assert events(sup.db, pod)[-1] == ("pod.failed", None, {"reason": "app bad: KeyError: 'uid'"})
    assert sup.runtime.running() == []
    assert sup.runtime.sandboxes == set()


async def test_app_lost_after_start_fails_its_pod_and_stops_the_others(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["lost"] = [Behaviour(runs_for=1.0, lost_with=OSError("pidfd gone"))]
    sup.runtime.script.update(partner=[Behaviour()], bystander=[Behaviour()])
    pod = prepare(sup.db, "losing", ["lost", "partner"])
    prepare(sup.db, "bystander", ["bystander"])
    manager = await sup.manager()
    await manager.start("bystander")
    assert (await manager.start("losing")).state == "running"
    final = await manager.wait("losing")
    assert final.state == "failed"
    reason = "app lost: OSError: pidfd gone"
    log = events(sup.db, pod)
    assert log[-1] == ("pod.failed", None, {"reason": reason})
    assert ("app.exited", "lost", {"reason": reason}) in log
    assert [p.app for p in sup.runtime.running()] == ["bystander"]
    await manager.torn_down(pod.uuid)  # wait answers before the teardown ends
    assert pod.uuid not in sup.runtime.sandboxes  # torn down
    assert (await manager.stop("bystander")).state == "exited"


async def test_a_failing_database_write_fails_the_start_not_the_supervisor(
    clock: trio.testing.MockClock, sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = prepare(sup.db, "unlucky", ["app"])
    prepare(sup.db, "lucky", ["lucky"])
    manager = await sup.manager()
    set_runtime = manager.store.set_runtime
    failures = [sqlite3.OperationalError("disk I/O error")]

    def flaky_set_runtime(*args: object) -> None:
        if failures:
            raise failures.pop()
        set_runtime(*args)  # type: ignore[arg-type]  # the original's arguments

    monkeypatch.setattr(manager.store, "set_runtime", flaky_set_runtime)
    with pytest.raises(PodStartError, match="OperationalError: disk I/O error"):
        await manager.start("unlucky")
    assert PodStore(sup.db).get(pod.uuid).state == "failed"
    assert sup.runtime.sandboxes == set()  # torn down all the same
    assert (await manager.start("lucky")).state == "running"
    await manager.stop_all()


async def test_exited_pod_starts_again(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["app"] = [Behaviour(runs_for=1.0, code=2), Behaviour(runs_for=1.0)]
    prepare(sup.db, "again", ["app"])
    manager = await sup.manager()
    await manager.start("again")
    assert (await manager.wait("again")).apps[0].exit_status == 2
    await manager.start("again")
    assert (await manager.wait("again")).apps[0].exit_status == 0


async def test_wait_answers_once_the_pod_ended_while_start_and_stop_wait_for_its_teardown(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    """The pod no longer runs once its apps have ended: ``wait`` answers then, with the
    sandbox still recorded; a start (or stop) meanwhile waits until the sandbox is gone."""
    sup.runtime.script["app"] = [Behaviour(runs_for=1.0)]
    sup.runtime.teardown_for = 5.0
    pod = prepare(sup.db, "slow", ["app"])
    manager = await sup.manager()
    began = trio.current_time()
    await manager.start("slow")
    ended = await manager.wait("slow")
    assert ended.state == "exited"
    assert trio.current_time() - began < 2  # not after the 5 s teardown
    assert PodStore(sup.db).get(pod.uuid).runtime == {"fake": pod.uuid}  # not yet gone
    with pytest.raises(ConflictError, match="not running"):
        await manager.kill("slow", signal.SIGTERM)
    await manager.start("slow")  # waits for the teardown, then starts
    assert trio.current_time() - began >= 6
    whats = [what for _, what, _ in sup.runtime.log if what in ("sandbox", "destroy")]
    assert whats == ["sandbox", "destroy", "sandbox"]
    await manager.wait("slow")
    stopping = trio.current_time()
    await manager.stop("slow")  # ended already: stop returns once the sandbox is gone
    assert trio.current_time() - stopping >= 4
    final = PodStore(sup.db).get(pod.uuid)
    assert (final.state, final.runtime) == ("exited", {})
    assert [t for t, _, _ in events(sup.db, pod)].count("pod.exited") == 2


async def test_wait_by_a_running_pods_uuid_is_one_lookup_and_names_still_come_first(
    clock: trio.testing.MockClock, sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait`` for a pod of ours by its uuid makes one query (each gives up the GIL to the
    threads of ended pods' teardowns): whether a pod is named so, as ``resolve`` puts names
    first. A pod named like another pod's uuid is the one waited for by that word."""
    sup.runtime.script.update(app=[Behaviour(runs_for=1.0)], other=[Behaviour(runs_for=3.0)])
    pod = prepare(sup.db, "mine", ["app"])
    manager = await sup.manager()
    await manager.start(pod.uuid)
    queries: list[str] = []
    query = StateDB.query

    def counted(self: StateDB, sql: str, params: object = ()) -> list[sqlite3.Row]:
        if not self.conn.in_transaction:  # not the exit record's own read-back
            queries.append(sql)
        return query(self, sql, params)

    monkeypatch.setattr(StateDB, "query", counted)
    ended = await manager.wait(pod.uuid)
    assert (ended.uuid, ended.state) == (pod.uuid, "exited")
    assert queries == ["SELECT uuid FROM pods WHERE name = ? OR uuid = ?"]

    named = prepare(sup.db, "placeholder", ["other"])
    with sup.db.transaction() as tx:
        tx.execute("UPDATE pods SET name = ? WHERE uuid = ?", (pod.uuid, named.uuid))
    await manager.start(pod.uuid)  # the pod named so, not the pod of that uuid
    assert set(manager.tasks) == {named.uuid}
    await manager.start("mine")
    began = trio.current_time()
    waited = await manager.wait(pod.uuid)
    assert (waited.uuid, waited.state) == (named.uuid, "exited")
    assert trio.current_time() - began >= 2  # "other" runs 3 s, "app" 1 s


async def test_a_teardown_cut_by_the_supervisors_end_is_finished_by_the_next(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    """Killed between the final record and the sandbox's teardown, a supervisor leaves the
    sandbox recorded with the ended pod: the next one removes it at start, with no event."""
    pod = prepare(sup.db, "cut", ["app"])
    with sup.db.transaction() as tx:
        PodStore(sup.db).set_runtime(tx, pod.uuid, {"fake": pod.uuid})
        tx.execute("UPDATE pods SET state = 'exited' WHERE uuid = ?", (pod.uuid,))
    sup.runtime.sandboxes.add(pod.uuid)
    before = events(sup.db, pod)
    await sup.manager()
    assert pod.uuid not in sup.runtime.sandboxes
    final = PodStore(sup.db).get(pod.uuid)
    assert (final.state, final.runtime) == ("exited", {})
    assert events(sup.db, pod) == before


async def test_adoption_after_detach_keeps_apps_and_applies_policy(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    sup.runtime.script["app"] = [Behaviour()]
    pod = prepare(sup.db, "kept", ["app"], restart="on-failure:1")
    first = await sup.manager()
    await first.start("kept")
    (original,) = sup.runtime.running(pod.uuid)
    first.detach()  # as `daemon-stop --keep-pods`: nothing is stopped
    await trio.sleep(1)
    assert sup.runtime.running(pod.uuid) == [original]
    second = await sup.manager()
    assert "pod.adopted" in [t for t, _, _ in events(sup.db, pod)]
    assert sup.runtime.running(pod.uuid) == [original]  # not started twice
    # killing the adopted app triggers its restart policy (on-failure: SIGKILL is a failure)
    await second.kill("kept", signal.SIGKILL)
    await trio.sleep(1)
    (restarted,) = sup.runtime.running(pod.uuid)
    assert restarted.pid != original.pid
    types = [t for t, _, _ in events(sup.db, pod)]
    assert types[-3:] == ["app.exited", "app.restarting", "app.started"]
    await second.stop("kept")


async def test_reconcile_pods_whose_processes_vanished(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    pod = prepare(sup.db, "ghost", ["app"])
    first = await sup.manager()
    await first.start("ghost")
    first.detach()
    await trio.sleep(0.1)
    sup.runtime.processes.clear()  # the host rebooted: no process, no sandbox
    sup.runtime.sandboxes.clear()
    await sup.manager()
    final = PodStore(sup.db).get(pod.uuid)
    assert final.state == "exited"
    assert final.apps[0].state == "exited"
    assert final.apps[0].exit_status is None
    last = events(sup.db, pod)[-1]
    assert last[0] == "pod.exited"
    assert "pod lost" in str(last[2]["reason"])


def _record_state(db: StateDB, pod: PodRecord, state: str) -> None:
    """As a supervisor killed mid-transition left it (the state written, the work not done)."""
    with db.transaction() as tx:
        tx.execute("UPDATE pods SET state = ? WHERE uuid = ?", (state, pod.uuid))


async def test_adopting_a_pod_recorded_starting_completes_its_start(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    pod = prepare(sup.db, "half", ["app"])
    first = await sup.manager()
    await first.start("half")
    first.detach()
    await trio.sleep(0.1)
    _record_state(sup.db, pod, "starting")  # killed after its app was recorded
    await sup.manager()
    assert PodStore(sup.db).get(pod.uuid).state == "running"  # not stuck in starting
    assert len(sup.runtime.running(pod.uuid)) == 1  # the app was adopted, not started again


async def test_adopting_a_pod_recorded_stopping_finishes_the_stop(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    pod = prepare(sup.db, "leaving", ["app"])
    first = await sup.manager()
    await first.start("leaving")
    first.detach()
    await trio.sleep(0.1)
    _record_state(sup.db, pod, "stopping")  # killed before its apps were stopped
    await sup.manager()
    await trio.sleep(30)
    assert PodStore(sup.db).get(pod.uuid).state == "exited"  # not stuck in stopping
    assert sup.runtime.running(pod.uuid) == []


async def test_a_start_cut_between_two_apps_fails_the_pod(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    pod = prepare(sup.db, "pair", ["one", "two"])
    first = await sup.manager()
    await first.start("pair")
    first.detach()
    await trio.sleep(0.1)
    _record_state(sup.db, pod, "starting")
    (two,) = [p for p in sup.runtime.running(pod.uuid) if p.app == "two"]
    two.end(ExitStatus(code=0))  # as if "two" had never started
    await sup.manager()
    final = PodStore(sup.db).get(pod.uuid)
    assert final.state == "failed"
    assert "start interrupted" in str(events(sup.db, pod)[-1][2]["reason"])


async def test_boot_pods_start_by_priority_and_stop_in_reverse(
    clock: trio.testing.MockClock, sup: Supervisor
) -> None:
    store = PodStore(sup.db)
    pods = {}
    for name, priority in (("a10", 10), ("b10", 10), ("c20", 20), ("manual", 5)):
        pods[name] = prepare(sup.db, name, [name])
        if name != "manual":
            with sup.db.transaction() as tx:
                store.set_boot(tx, pods[name], True, priority)
    manager = await sup.manager("boot.parallel=4")
    await manager.start_boot_pods()
    starts = [(t, app) for t, what, app in sup.runtime.log if what == "start"]
    order = [app for _, app in starts]
    assert sorted(order[:2]) == ["a10", "b10"]
    assert order[2:] == ["c20"]  # manual is not a boot pod
    await manager.stop_all()
    stops = [app for _, what, app in sup.runtime.log if what == "exit"]
    assert stops[0] == "c20"
    assert sorted(stops[1:]) == ["a10", "b10"]
    seq = {e.pod_name: e.seq for e in sup.db.events_since(0) if e.type == "pod.started"}
    assert max(seq["a10"], seq["b10"]) < seq["c20"]


async def test_stop_all_records_a_priority_groups_stopping_in_one_transaction(
    clock: trio.testing.MockClock, sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 pods' stop must not wait for 500 commits in a row before the last is signalled:
    a group's pod.stopping transitions are one transaction, then each pod records its app's
    exit, its end, and (once its sandbox is gone) that it holds none (three each)."""
    pods = []
    for name in ("one", "two", "three"):
        sup.runtime.script[f"{name}-app"] = [Behaviour(runs_for=3600.0)]
        pods.append(prepare(sup.db, name, [f"{name}-app"]))
    manager = await sup.manager()
    for pod in pods:
        await manager.start(pod.name)
    commits: list[int] = []
    transaction = sup.db.transaction

    def counted() -> object:
        commits.append(1)
        return transaction()

    monkeypatch.setattr(sup.db, "transaction", counted)
    await manager.stop_all(grace=1.0)
    assert len(commits) == 1 + 3 * len(pods)
    for pod in pods:
        assert [t for t, _, _ in events(sup.db, pod)][-3:] == \
            ["pod.stopping", "app.exited", "pod.exited"]
        assert PodStore(sup.db).get(pod.uuid).state == "exited"
    assert sup.runtime.running() == []


async def test_the_last_apps_end_and_the_pods_are_one_transaction(
    clock: trio.testing.MockClock, sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a pod's last app, with no restart to come, commits with the pod's final
    state (one database round trip before ``wait`` answers, not two); an app that ends
    before the others commits alone. ``wait`` answers with the record as committed. So does
    the start of its last app with the pod's ``running``, and ``start`` answers with that."""
    sup.runtime.script.update(first=[Behaviour(runs_for=1.0)],
                              last=[Behaviour(runs_for=2.0, code=3)])
    sup.runtime.teardown_for = 5.0
    pod = prepare(sup.db, "pair", ["first", "last"])
    manager = await sup.manager()
    batches: list[list[str]] = []
    real = manager._record

    async def record(change: Callable[[Transaction], None]) -> None:
        before = sup.db.events_since(0)[-1].seq
        await real(change)
        batches.append([e.type for e in sup.db.events_since(before) if e.pod == pod.uuid])

    monkeypatch.setattr(manager, "_record", record)
    started = await manager.start("pair")
    assert batches == [["pod.starting"], ["app.started"], ["app.started", "pod.started"]]
    assert started.to_json_obj() == PodStore(sup.db).get(pod.uuid).to_json_obj()
    assert started.state == "running"
    final = await manager.wait("pair")
    assert batches[3:] == [["app.exited"], ["app.exited", "pod.exited"]]
    assert final.to_json_obj() == PodStore(sup.db).get(pod.uuid).to_json_obj()
    assert (final.state, final.app("last").exit_status) == ("exited", 3)
    assert final.runtime == {"fake": pod.uuid}  # recorded before the teardown, which goes on
    await manager.torn_down(pod.uuid)
    assert PodStore(sup.db).get(pod.uuid).runtime == {}
    types = [t for t, _, _ in events(sup.db, pod)]
    assert types[-3:] == ["app.exited", "app.exited", "pod.exited"]


@pytest.mark.parametrize("plan", ["same", "other"])
async def test_the_planned_sandbox_is_recorded_with_starting(
    clock: trio.testing.MockClock, sup: Supervisor, monkeypatch: pytest.MonkeyPatch, plan: str
) -> None:
    """A supervisor killed while the sandbox is made finds the pod starting with the sandbox
    the runtime planned (one transaction with ``pod.starting``); the sandbox made is recorded
    again only when it is not that one."""
    pod = prepare(sup.db, "planned", ["app"])
    planned = {"fake": pod.uuid} if plan == "same" else {"fake": "planned"}
    seen: list[PodRecord] = []
    create = sup.runtime.create_sandbox

    async def planning(pod: PodRecord) -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return planned

    async def creating(pod: PodRecord) -> dict[str, object]:
        seen.append(PodStore(sup.db).get(pod.uuid))
        return await create(pod)

    monkeypatch.setattr(sup.runtime, "plan_sandbox", planning)
    monkeypatch.setattr(sup.runtime, "create_sandbox", creating)
    manager = await sup.manager()
    records = 0
    real = manager._record

    async def record(change: Callable[[Transaction], None]) -> None:
        nonlocal records
        records += 1
        await real(change)

    monkeypatch.setattr(manager, "_record", record)
    await manager.start("planned")
    assert (seen[0].state, seen[0].runtime) == ("starting", planned)
    assert PodStore(sup.db).get(pod.uuid).runtime == {"fake": pod.uuid}
    # starting (with the plan), the runtime made when it differs, app.started with running
    assert records == (2 if plan == "same" else 3)
    await manager.stop("planned")
