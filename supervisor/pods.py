"""The pod manager: every running pod is a task in one nursery, every app a monitored child.

It owns lifecycle state: each transition (prepared → starting → running → stopping → exited,
restarts, failed) is written to the database with its event in one transaction. Teardown is
shielded from cancellation and always confirms the exit; detaching (``daemon-stop
--keep-pods``) cancels the tasks without touching the apps, which the next supervisor adopts.

Each pod task is a boundary: whatever it raises (a driver's ``JetpackError``, an ``OSError`` of
the host, a bug) fails that pod only, as ``pod.failed`` with a one-line reason (the traceback
goes to the daemon log); the supervisor and the other pods go on. Every database call runs in
a worker thread under one limiter (``in_db_thread``): the connection has one user at a time.
The lookups of a command (``resolve``, the record it answers with) may go through a second,
read-only connection with its own thread (``in_read_thread``): in WAL mode they never queue
behind a write transaction, and each sees every commit made before it began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
import trio

from jetpack.config import Config
from jetpack.errors import ConflictError, JetpackError, PodStartError
from jetpack.killpoint import killpoint
from jetpack.log import get_logger
from jetpack.state import StateDB, Transaction
from jetpack.store.pods import AppRecord, PodRecord, PodStore
from jetpack.supervisor.backoff import Backoff, RestartPolicy
from jetpack.supervisor.runtime import AppProcess, ExitStatus, PodRuntime

log = get_logger(component="pods")
T = TypeVar("T")

LIVE_STATES = ("starting", "running", "stopping")
ANSWER_GRACE = 0.005
"""Seconds at most an ended pod's teardown waits for the loop to answer who waited for it."""
UNKNOWN_EXIT = "exit status unknown: the app ended while no supervisor watched it"
# Why a pod recorded live is found without its processes (``_reconcile_gone``), by the state
# the supervisor that died left it in.
LOST = {
    "starting": "start interrupted: the supervisor ended before the pod ran",
    "running": "pod lost: its processes are gone (the host rebooted, or they ended while no "
               "supervisor watched)",
    "stopping": "stop interrupted: the supervisor ended while stopping the pod; its processes "
                "are gone",
}


@dataclass
class PodTask:
    """The supervisor's live view of one running pod."""

    pod: PodRecord
    sandbox: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, AppProcess] = field(default_factory=dict)
    stopping: bool = False
    failed: bool = False
    failure: str | None = None
    start_failed: bool = False  # the pod never ran: its sandbox or an app could not start
    stop_timeout: float | None = None
    ended: trio.Event = field(default_factory=trio.Event)  # its final state is recorded
    final: PodRecord | None = None  # the pod as that record left it (what ``wait`` answers)
    completes_start: str | None = None  # the app whose first start makes the pod running
    started: PodRecord | None = None  # the pod as its ``running`` record left it (``start``)
    ending: set[str] = field(default_factory=set)  # the apps whose task has not ended for good
    done: trio.Event = field(default_factory=trio.Event)  # and its sandbox is gone
    restart_waits: set[trio.CancelScope] = field(default_factory=set)


class PodManager:
    """Starts, watches, restarts, stops and adopts pods. Start with ``nursery.start(run)``."""

    def __init__(
        self,
        config: Config,
        db: StateDB,
        runtime: PodRuntime,
        *,
        notify: Callable[[], None] = lambda: None,
        db_limiter: trio.CapacityLimiter | None = None,
        reader: StateDB | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.store = PodStore(db)
        self.runtime = runtime
        self.notify = notify
        self.tasks: dict[str, PodTask] = {}
        self.detaching = False
        # The one limiter of the connection ``db``: whoever else uses it from async code (the
        # daemon, the control API, the metadata service) goes through ``in_db_thread``.
        self.db_limiter = db_limiter if db_limiter is not None else trio.CapacityLimiter(1)
        # ``reader`` (``StateDB.open_reader``): the commands' lookups, one at a time on it;
        # without one they go through ``db``. The caller closes it.
        self.reader = reader
        self._read_store = PodStore(reader) if reader is not None else self.store
        self._read_limiter = trio.CapacityLimiter(1) if reader is not None else self.db_limiter
        self._nursery: trio.Nursery | None = None

    # --- database access, off the event loop -------------------------------------------------

    async def in_db_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which uses the state database) in a worker thread, one at a time."""
        return await trio.to_thread.run_sync(fn, limiter=self.db_limiter)

    async def in_read_thread(self, fn: Callable[[PodStore], T], *, snapshot: bool = True
                             ) -> T:
        """Run ``fn(store)``, which only reads, in one snapshot of the database (``snapshot``
        False: ``fn`` makes one query, its own snapshot): on the read-only connection when
        there is one (it waits for no write in progress)."""
        store, db = self._read_store, self._read_store.state

        def read() -> T:
            if not snapshot:
                return fn(store)
            with db.snapshot():
                return fn(store)

        return await trio.to_thread.run_sync(read, limiter=self._read_limiter)

    async def _record(self, change: Callable[[Transaction], None]) -> None:
        def run() -> None:
            with self.db.transaction() as tx:
                change(tx)

        with trio.CancelScope(shield=True):  # a half-recorded transition is worse than a delay
            await self.in_db_thread(run)
        self.notify()

    def in_background(self, what: str, work: Callable[[], object]) -> None:
        """Run ``work`` in a worker thread as a task of the manager (its end waits for it),
        after the caller has answered; a failure is logged as ``what`` failing."""
        assert self._nursery is not None, "PodManager.run is not running"

        async def run() -> None:
            try:
                await trio.to_thread.run_sync(work)
            except Exception as exc:  # noqa: BLE001  # logged; nobody waits for the answer
                _log_failure(log, f"{what} failed", exc)

        self._nursery.start_soon(run)

    async def resolve(self, ref: str) -> PodRecord:
        return await self.in_read_thread(lambda store: store.resolve(ref))

    async def _means_its_pod(self, ref: str, task: PodTask) -> bool:
        """Whether ``ref``, the uuid of ``task``'s pod, resolves to that pod, and the task is
        still ours: no pod is named ``ref`` (names come first) and the pod's row is there. One
        statement instead of ``resolve``'s half dozen: each gives up the GIL and waits to get
        it back, behind the threads of an ended pod's teardown (``wait`` comes then)."""
        def check(store: PodStore) -> bool:
            rows = store.state.query("SELECT uuid FROM pods WHERE name = ? OR uuid = ?",
                                     (ref, ref))
            return bool(rows) and all(row["uuid"] == ref for row in rows)

        return await self.in_read_thread(check, snapshot=False) and self.tasks.get(ref) is task

    async def _get(self, uuid: str) -> PodRecord:
        return await self.in_read_thread(lambda store: store.get(uuid))

    # --- service ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[PodManager] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.adopt_all()
            task_status.started(self)
            await trio.sleep_forever()

    def detach(self) -> None:
        """Stop watching every pod without touching it (the next supervisor adopts them)."""
        self.detaching = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def stop_all(self, grace: float | None = None) -> None:
        """Stop every running pod, in reverse boot order: highest priority number first, the
        pods of one priority in parallel. A group's ``pod.stopping`` transitions are one
        transaction (500 pods: one commit, not 500 one after another before any signal)."""
        for priority in sorted({t.pod.priority for t in self.tasks.values()}, reverse=True):
            group = [t for t in self.tasks.values() if t.pod.priority == priority]
            fresh = [t for t in group if not t.stopping]
            for task in fresh:
                task.stopping = True

            def record(tx: Transaction, tasks: list[PodTask] = fresh) -> None:
                for task in tasks:
                    if task.pod.state in ("starting", "running"):
                        self.store.transition(tx, task.pod, "stopping")

            if fresh:
                await self._record(record)
            async with trio.open_nursery() as nursery:
                for task in group:
                    if task in fresh:
                        nursery.start_soon(self._halt_task, task, grace)
                    else:  # already stopping: wait for it as stop does
                        nursery.start_soon(self._stop_task, task, grace)

    async def _halt_task(self, task: PodTask, grace: float | None) -> None:
        """``_stop_task`` for a pod whose stop stop_all has already recorded."""
        await self._stop_processes(task, grace)
        await task.done.wait()

    async def start_boot_pods(self) -> None:
        """Start the pods marked with ``enable``: by ascending priority; the pods of one
        priority in parallel (at most ``boot.parallel`` at once); a group only once every pod
        of the one before is running or has failed."""
        pods = await self.in_db_thread(self.store.all)
        boot = [p for p in pods if p.boot and p.uuid not in self.tasks]
        limiter = trio.CapacityLimiter(self.config.int("boot.parallel"))

        async def start_one(pod: PodRecord) -> None:
            async with limiter:
                try:
                    await self.start(pod.uuid)
                except Exception as exc:  # noqa: BLE001  # one boot pod's failure stops no other
                    _log_failure(log.bind(pod=pod.uuid, pod_name=pod.name),
                                 "boot pod did not start", exc)

        for priority in sorted({p.priority for p in boot}):
            async with trio.open_nursery() as nursery:
                for pod in [p for p in boot if p.priority == priority]:
                    nursery.start_soon(start_one, pod)

    # --- commands ---------------------------------------------------------------------------

    async def start(self, ref: str) -> PodRecord:
        """Start a prepared, exited or failed pod; returns once every app runs (or ran).

        A pod that cannot start raises ``PodStartError`` with the reason once it is torn
        down and recorded failed."""
        pod = await self.resolve(ref)
        ending = self.tasks.get(pod.uuid)
        if ending is not None and ending.ended.is_set():
            # it has exited and its sandbox is being torn down: start once that is done
            await ending.done.wait()
            pod = await self.resolve(pod.uuid)
        if pod.uuid in self.tasks:
            raise ConflictError(f"pod {pod.name} is already {pod.state}")
        if pod.state in LIVE_STATES:
            raise ConflictError(f"pod {pod.name} is {pod.state} under another supervisor")
        assert self._nursery is not None, "PodManager.run is not running"
        task: PodTask = await self._nursery.start(self._run_pod, pod, None)
        if task.start_failed:
            await task.done.wait()
            raise PodStartError(f"pod {pod.name} failed to start: {task.failure}")
        if task.started is not None:
            return task.started
        return await self._get(pod.uuid)

    async def stop(self, ref: str, grace: float | None = None) -> PodRecord:
        """Stop a pod; returns once every app's exit is confirmed and the sandbox is gone."""
        pod = await self.resolve(ref)
        task = self.tasks.get(pod.uuid)
        if task is not None:
            await self._stop_task(task, grace)
        return await self._get(pod.uuid)

    async def wait(self, ref: str) -> PodRecord:
        """Wait until the pod is no longer running (returns at once if it is not): once its
        final state is recorded, while its sandbox may still be being torn down (``stop``,
        ``start`` and ``torn_down`` wait for that)."""
        task = self.tasks.get(ref)
        if task is None or not await self._means_its_pod(ref, task):
            pod = await self.resolve(ref)
            task = self.tasks.get(pod.uuid)
        else:
            pod = task.pod
        if task is not None:
            await task.ended.wait()
            if task.final is not None:
                return task.final
        return await self._get(pod.uuid)

    async def torn_down(self, pod_uuid: str) -> None:
        """Return once the pod's sandbox is gone (at once when no task of ours has it)."""
        task = self.tasks.get(pod_uuid)
        if task is not None:
            await task.done.wait()

    async def kill(self, ref: str, signum: int) -> PodRecord:
        pod = await self.resolve(ref)
        task = self.tasks.get(pod.uuid)
        if task is None or task.ended.is_set():
            raise ConflictError(f"pod {pod.name} is not running ({pod.state})")
        for process in list(task.processes.values()):
            await self.runtime.signal_app(task.pod, task.sandbox, process, signum)
        return pod

    async def restart(self, ref: str, grace: float | None = None) -> PodRecord:
        pod = await self.stop(ref, grace)
        return await self.start(pod.uuid)

    # --- the pod task -----------------------------------------------------------------------

    async def _run_pod(
        self,
        pod: PodRecord,
        adopted: dict[str, AppProcess] | None,
        *,
        task_status: trio.TaskStatus[PodTask] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task = PodTask(pod, sandbox=dict(pod.runtime) if adopted is not None else {},
                       ending={app.name for app in pod.apps},
                       completes_start=pod.apps[-1].name if adopted is None and pod.apps
                       else None)
        self.tasks[pod.uuid] = task
        bound = log.bind(pod=pod.uuid, pod_name=pod.name)
        reported = False
        try:
            if adopted is None:
                # The sandbox the runtime will make is recorded with the start: a supervisor
                # killed while it is being made knows what to remove (as from then on).
                planned: dict[str, Any] = {}
                unplanned: Exception | None = None
                try:
                    planned = await self.runtime.plan_sandbox(pod)
                except Exception as exc:  # noqa: BLE001  # fails the start below, once recorded
                    unplanned = exc

                def starting(tx: Transaction) -> None:
                    self.store.transition(tx, pod, "starting")
                    self.store.set_runtime(tx, pod.uuid, planned)

                await self._record(starting)
                killpoint("start.starting-recorded")
                try:
                    if unplanned is not None:
                        raise unplanned
                    task.sandbox = await self.runtime.create_sandbox(pod)
                except Exception as exc:  # noqa: BLE001  # the pod task's boundary
                    _fail_start(task, f"sandbox: {failure_reason(exc)}")
                    _log_failure(bound, "pod sandbox failed", exc)
                    await self._finish(task)
                    task_status.started(task)
                    reported = True
                    return
                sandbox = task.sandbox
                killpoint("start.sandbox-created")
                if sandbox != planned:
                    await self._record(lambda tx: self.store.set_runtime(tx, pod.uuid, sandbox))
                killpoint("start.sandbox-recorded")
            async with trio.open_nursery() as apps:
                for app in pod.apps:
                    process = adopted.get(app.name) if adopted is not None else None
                    try:
                        await apps.start(self._run_app, task, app, process, adopted is not None)
                    except Exception as exc:  # noqa: BLE001  # the pod task's boundary
                        _fail_start(task, f"app {app.name}: {failure_reason(exc)}")
                        _log_failure(bound.bind(app=app.name), "app failed to start", exc)
                        apps.start_soon(self._stop_apps, task, 0.0)
                        break
                if not task.stopping and not task.start_failed and adopted is None:
                    if task.started is None:  # else the last app's start recorded it
                        await self._record(lambda tx: self.store.transition(tx, pod, "running"))
                    killpoint("start.running-recorded")
                elif adopted is not None and not task.stopping and pod.state == "starting":
                    # every app runs: the start the dead supervisor was making is complete
                    await self._record(lambda tx: self.store.transition(tx, pod, "running"))
                elif adopted is not None and pod.state == "stopping":
                    # the stop the dead supervisor was making goes on
                    apps.start_soon(self._stop_apps, task, None, True)
                task_status.started(task)
                reported = True
            if self.detaching:
                return
            await self._finish(task)
        except Exception as exc:  # noqa: BLE001  # the pod task's boundary: this pod fails alone
            if not reported:
                _fail_start(task, failure_reason(exc))
            await self._contain(task, exc)
        finally:
            if not reported:
                task_status.started(task)
            self.tasks.pop(pod.uuid, None)
            task.ended.set()
            task.done.set()

    async def _contain(self, task: PodTask, exc: Exception) -> None:
        """The pod task's last boundary (the state database or the manager itself failed):
        stop what still runs, tear down, and record the pod failed, as far as that goes."""
        task.failed = True
        task.failure = task.failure or failure_reason(exc)
        bound = log.bind(pod=task.pod.uuid, pod_name=task.pod.name)
        _log_failure(bound, "pod task failed", exc)
        with trio.CancelScope(shield=True):
            task.stopping = True
            for process in list(task.processes.values()):
                await self._stop_process(task, process, 0.0)
            task.processes.clear()
            try:
                await self._finish(task)
            except Exception as again:  # noqa: BLE001  # logged; the supervisor goes on
                _log_failure(bound, "recording the failed pod failed", again)

    async def _finish(self, task: PodTask) -> None:
        """Record the pod's final state, then tear its sandbox down and forget it (shielded).

        The state comes first: once every app has ended the pod no longer runs, and ``wait``
        answers then, without the teardown's kernel work (a veth, nftables, namespaces,
        cgroups: milliseconds of RCU waits). The sandbox stays recorded (``pod.runtime``)
        until it is gone, so a supervisor killed between the two finds it and finishes the
        teardown (``adopt_all``); the pod's task stays in ``tasks`` meanwhile, and ``start``,
        ``stop`` and ``run --rm``'s destroy wait for its end."""
        pod = task.pod
        with trio.CancelScope(shield=True):
            if task.final is None:  # else the last app's end recorded it (``_app_exited``)
                await self._record_final(task)
            task.ended.set()
            killpoint("stop.final-recorded")
            if task.sandbox:
                await _let_answers_out()
                await self._tear_down(pod, task.sandbox)

    async def _record_final(self, task: PodTask,
                            also: Callable[[Transaction], None] | None = None) -> None:
        """Record the pod's final state (after ``also``, in the same transaction) and keep
        the record it leaves, read back in that transaction, for ``wait`` to answer with."""
        pod = task.pod
        final = "failed" if task.failed else "exited"
        extra = {"reason": task.failure} if task.failure else {}
        sandbox = task.sandbox
        recorded: list[PodRecord] = []

        def record(tx: Transaction) -> None:
            if also is not None:
                also(tx)
            if not sandbox:
                self.store.set_runtime(tx, pod.uuid, {})
            self.store.transition(tx, pod, final, **extra)
            recorded.append(self.store.get(pod.uuid))

        await self._record(record)
        task.final = recorded[0]

    async def _tear_down(self, pod: PodRecord, sandbox: dict[str, Any]) -> None:
        """Destroy the sandbox of a pod whose final state is recorded, then forget it (the
        runtime handle goes only once the sandbox has: a failure leaves it for the next
        supervisor, or ``gc``, to try again)."""
        try:
            await self.runtime.destroy_sandbox(pod, sandbox)
        except Exception as exc:  # noqa: BLE001  # the pod is recorded all the same
            _log_failure(log.bind(pod=pod.uuid), "pod teardown failed", exc)
            return
        killpoint("stop.sandbox-destroyed")
        await self._record(lambda tx: self.store.set_runtime(tx, pod.uuid, {}))

    async def _stop_task(self, task: PodTask, grace: float | None) -> None:
        """Stop the pod's apps and wait until the pod task has recorded its end."""
        await self._stop_apps(task, grace)
        await task.done.wait()

    async def _stop_apps(self, task: PodTask, grace: float | None, resumed: bool = False
                         ) -> None:
        """Stop every app (SIGTERM, ``grace`` seconds, SIGKILL); None: ``pod.stop-timeout``.
        ``resumed``: an adopted pod recorded ``stopping`` (the transition is there already)."""
        if grace is None:
            grace = self.config.duration("pod.stop-timeout")
        if task.stopping:
            return
        task.stopping = True
        if task.pod.state in ("starting", "running") and not resumed:
            try:
                await self._record(lambda tx: self.store.transition(tx, task.pod, "stopping"))
            except BaseException:
                task.stopping = False  # not recorded (a full disk), so not begun: stop may retry
                raise
            killpoint("stop.stopping-recorded")
        await self._stop_processes(task, grace)

    async def _stop_processes(self, task: PodTask, grace: float | None) -> None:
        """The signalling half of ``_stop_apps`` (its pod is marked stopping)."""
        if grace is None:
            grace = self.config.duration("pod.stop-timeout")
        for scope in task.restart_waits:
            scope.cancel()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for process in list(task.processes.values()):
                    nursery.start_soon(self._stop_process, task, process, grace)
            killpoint("stop.app-stopped")

    async def _stop_process(self, task: PodTask, process: AppProcess, grace: float) -> None:
        """``runtime.stop_app``; a failure is logged (the sandbox's teardown kills what is
        left) and never reaches the nursery it runs in (the manager's, the pod's)."""
        try:
            await self.runtime.stop_app(task.pod, task.sandbox, process, grace)
        except Exception as exc:  # noqa: BLE001  # see the docstring
            _log_failure(log.bind(pod=task.pod.uuid, app=process.app), "stopping an app failed",
                         exc)

    # --- the app task -----------------------------------------------------------------------

    async def _run_app(
        self,
        task: PodTask,
        app: AppRecord,
        process: AppProcess | None,
        adopted: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The app task's boundary. What fails before the app first runs goes to the pod task
        (which fails the start); what fails later (a restart that cannot start, a runtime that
        loses the app) fails the pod, which stops its other apps."""
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        try:
            await self._watch_app(task, app, process, adopted, report)
        except Exception as exc:
            if not reported:
                task.ending.discard(app.name)
                raise
            reason = f"app {app.name}: {failure_reason(exc)}"
            _log_failure(log.bind(pod=task.pod.uuid, pod_name=task.pod.name, app=app.name),
                         "app failed", exc)
            task.failed, task.failure = True, task.failure or reason
            with trio.CancelScope(shield=True):
                left = task.processes.pop(app.name, None)
                if left is not None:
                    await self._stop_process(task, left, 0.0)
                await self._app_exited(task.pod, app, None, reason=reason)
                task.ending.discard(app.name)
            self._stop_rest(task)

    async def _watch_app(
        self,
        task: PodTask,
        app: AppRecord,
        process: AppProcess | None,
        adopted: bool,
        report: Callable[[], None],
    ) -> None:
        """Run the app, wait for it, restart it as its policy says; ``report()`` once it first
        runs (or is found gone, when adopted)."""
        pod = task.pod
        policy = RestartPolicy.parse(pod.options.restart)
        backoff = Backoff(
            initial=self.config.duration("restart.delay"),
            cap=self.config.duration("restart.max-delay"),
            reset_after=self.config.duration("restart.reset-after"),
        )
        restarts = app.restarts if adopted else 0
        unknown_exit = adopted and process is None
        while True:
            if unknown_exit:
                status: ExitStatus | None = None
            else:
                if process is None:
                    # A restart that cannot start (a volume source swapped for a symlink)
                    # fails the pod at _run_app's boundary, never the supervisor.
                    process = await self.runtime.start_app(pod, task.sandbox, app)
                    killpoint("start.app-spawned")
                    completes = (task.completes_start == app.name and not task.stopping
                                 and not task.start_failed)
                    if task.completes_start == app.name:
                        task.completes_start = None
                    await self._app_started(pod, app, process, restarts,
                                            completes=task if completes else None)
                    killpoint("start.app-recorded")
                task.processes[app.name] = process
                report()
                began = trio.current_time()
                status = await self.runtime.wait_app(pod, task.sandbox, process)
                task.processes.pop(app.name, None)
                uptime = trio.current_time() - began
            failed = status is None or not status.succeeded
            if (not task.stopping and not task.ending - {app.name}
                    and not policy.wants_restart(failed=failed, restarts_so_far=restarts)
                    and task.pod.state == "running" and not task.start_failed):
                # The pod's last app has ended for good: its end and the pod's final state
                # are one transaction, and ``wait`` answers once it is committed.
                if failed and policy.kind != "never":
                    task.failed = True
                    task.failure = f"app {app.name} reached its restart limit ({policy})"
                task.ending.discard(app.name)
                await self._app_exited(pod, app, status, ends=task)
                report()
                return
            await self._app_exited(pod, app, status)
            report()
            process, unknown_exit = None, False
            if task.stopping:
                task.ending.discard(app.name)
                return
            if not policy.wants_restart(failed=failed, restarts_so_far=restarts):
                task.ending.discard(app.name)
                if failed and policy.kind != "never":
                    task.failed = True
                    task.failure = f"app {app.name} reached its restart limit ({policy})"
                    self._stop_rest(task)
                return
            delay = backoff.next_delay(uptime if status is not None else 0.0)
            restarts += 1
            app.restarts, app.state = restarts, "restarting"

            def record(tx: Transaction, attempt: int = restarts, wait: float = delay) -> None:
                self.store.update_app(tx, pod.uuid, app)
                tx.event("app.restarting", pod=pod.uuid, pod_name=pod.name, app=app.name,
                         image=app.image_id, attempt=attempt, delay=round(wait, 6))

            await self._record(record)
            with trio.CancelScope() as waiting:
                task.restart_waits.add(waiting)
                await trio.sleep(delay)
            task.restart_waits.discard(waiting)
            if waiting.cancelled_caught or task.stopping:
                task.ending.discard(app.name)
                return

    def _stop_rest(self, task: PodTask) -> None:
        """A failed pod stops its other apps (the pod fails as a unit)."""
        if self._nursery is not None and task.processes:
            self._nursery.start_soon(self._stop_apps, task, None)
        else:
            task.stopping = True

    async def _app_started(
        self, pod: PodRecord, app: AppRecord, process: AppProcess, restarts: int,
        *, completes: PodTask | None = None,
    ) -> None:
        """Record the app running. ``completes``: the pod task whose start this app's (its
        last app's first) completes: the pod's ``running`` is recorded in the same
        transaction (after ``app.started``), read back for ``start`` to answer with."""
        pid = process.identity.pid
        app.state, app.pid, app.pid_start = "running", pid, str(process.identity.start_time)
        app.process = process.to_json()
        app.exit_status = app.signal = None
        app.restarts = restarts

        recorded: list[PodRecord] = []

        def record(tx: Transaction) -> None:
            self.store.update_app(tx, pod.uuid, app)
            tx.event("app.started", pod=pod.uuid, pod_name=pod.name, app=app.name,
                     image=app.image_id, pid=pid)
            if completes is not None:
                self.store.transition(tx, pod, "running")
                recorded.append(self.store.get(pod.uuid))

        await self._record(record)
        if completes is not None:
            completes.started = recorded[0]

    async def _app_exited(self, pod: PodRecord, app: AppRecord, status: ExitStatus | None,
                          *, reason: str = UNKNOWN_EXIT, ends: PodTask | None = None) -> None:
        """Record the app's end: its status, or (``status`` None) ``reason`` why none is known.
        ``ends``: the pod task this app was the last of; its final state is recorded in the
        same transaction (after ``app.exited``) and its ``ended`` set."""
        app.state, app.pid, app.pid_start = "exited", None, None
        app.process = {}
        app.exit_status = status.code if status is not None else None
        app.signal = status.signal if status is not None else None
        payload: dict[str, Any] = (
            status.payload() if status is not None else {"reason": reason}
        )

        def record(tx: Transaction) -> None:
            self.store.update_app(tx, pod.uuid, app)
            tx.event("app.exited", pod=pod.uuid, pod_name=pod.name, app=app.name,
                     image=app.image_id, **payload)

        if ends is None:
            await self._record(record)
            return
        await self._record_final(ends, also=record)
        ends.ended.set()

    # --- adoption ---------------------------------------------------------------------------

    async def adopt_all(self) -> None:
        """Adopt the pods a previous supervisor left running; reconcile those that are gone."""
        assert self._nursery is not None
        pods = await self.in_db_thread(self.store.all)
        for pod in pods:
            if pod.state not in LIVE_STATES:
                if pod.runtime:  # ended, its teardown cut short by the last supervisor's end
                    with trio.CancelScope(shield=True):
                        await self._tear_down(pod, pod.runtime)
                continue
            try:
                processes = await self.runtime.recover(pod, pod.runtime)
            except Exception as exc:  # noqa: BLE001  # one pod's recovery stops no other
                _log_failure(log.bind(pod=pod.uuid), "pod recovery failed", exc)
                processes = None
            if not processes or (pod.state == "starting" and len(processes) < len(pod.apps)):
                # gone; or a start cut between two apps: it fails whole (the teardown kills the
                # apps that did start), as a start that could not start every app does
                await self._reconcile_gone(pod)
                continue
            await self._record(_adopted_event(pod, sorted(processes)))
            await self._nursery.start(self._run_pod, pod, processes)

    async def _reconcile_gone(self, pod: PodRecord) -> None:
        """A pod recorded live whose processes are gone (host crash or reboot, or a
        supervisor killed mid-start or mid-stop). An empty runtime is torn down too: its
        creation may have been cut after making some of it."""
        reason = LOST.get(pod.state, LOST["running"])
        final = "failed" if pod.state == "starting" else "exited"
        with trio.CancelScope(shield=True):
            try:
                await self.runtime.destroy_sandbox(pod, pod.runtime)
            except Exception as exc:  # noqa: BLE001  # the pod is reconciled all the same
                _log_failure(log.bind(pod=pod.uuid), "cleanup of a vanished pod failed", exc)

            def record(tx: Transaction) -> None:
                for app in pod.apps:
                    if app.state in ("running", "restarting"):
                        app.state, app.pid, app.pid_start = "exited", None, None
                        app.exit_status = app.signal = None
                        self.store.update_app(tx, pod.uuid, app)
                        tx.event("app.exited", pod=pod.uuid, pod_name=pod.name, app=app.name,
                                 image=app.image_id, reason=UNKNOWN_EXIT)
                self.store.set_runtime(tx, pod.uuid, {})
                self.store.transition(tx, pod, final, reason=reason)

            await self._record(record)


async def _let_answers_out() -> None:
    """Let the tasks an ended pod woke (``wait``'s answers) reach their clients before its
    teardown's worker threads (a veth's netlink calls, a scan of /proc) compete with the loop
    thread for the GIL: a thread that holds it keeps the loop waiting up to the interpreter's
    switch interval (5 ms) at each handoff. Until the loop has nothing else to run, at most
    ``ANSWER_GRACE`` seconds (a busy supervisor's teardowns are not held up longer)."""
    from trio.testing import wait_all_tasks_blocked  # the daemon's only: not at import

    with trio.move_on_after(ANSWER_GRACE):
        await wait_all_tasks_blocked()


def failure_reason(exc: BaseException) -> str:
    """One line for a ``pod.failed`` reason: a ``JetpackError``'s message, anything else
    with its class name (a bug or a host surprise); a group of one stands for its member."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc) if isinstance(exc, JetpackError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _fail_start(task: PodTask, reason: str) -> None:
    task.failed, task.start_failed = True, True
    task.failure = task.failure or reason


def _log_failure(bound: structlog.typing.FilteringBoundLogger, message: str,
                 exc: BaseException) -> None:
    """A ``JetpackError`` is already a plain report; anything else is logged with its
    traceback, which only the daemon log shows."""
    if isinstance(exc, JetpackError):
        bound.error(message, error=failure_reason(exc))
    else:
        bound.error(message, error=failure_reason(exc), exc_info=exc)


def _adopted_event(pod: PodRecord, apps: list[str]) -> Callable[[Transaction], None]:
    def record(tx: Transaction) -> None:
        tx.event("pod.adopted", pod=pod.uuid, pod_name=pod.name, apps=apps)

    return record
