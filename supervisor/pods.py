"""The pod manager: every running pod is a task in one nursery, every app a monitored child.

It owns lifecycle state: each transition (prepared → starting → running → stopping → exited,
restarts, failed) is written to the database with its event in one transaction. Teardown is
shielded from cancellation and always confirms the exit; detaching (``daemon-stop
--keep-pods``) cancels the tasks without touching the apps, which the next supervisor adopts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from jetpack.config import Config
from jetpack.errors import ConflictError, JetpackError
from jetpack.log import get_logger
from jetpack.state import StateDB, Transaction
from jetpack.store.pods import AppRecord, PodRecord, PodStore
from jetpack.supervisor.restart import Backoff, RestartPolicy
from jetpack.supervisor.runtime import AppProcess, ExitStatus, PodRuntime

log = get_logger(component="pods")
T = TypeVar("T")

LIVE_STATES = ("starting", "running", "stopping")
UNKNOWN_EXIT = "exit status unknown: the app ended while no supervisor watched it"


@dataclass
class PodTask:
    """The supervisor's live view of one running pod."""

    pod: PodRecord
    sandbox: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, AppProcess] = field(default_factory=dict)
    stopping: bool = False
    failed: bool = False
    failure: str | None = None
    stop_timeout: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
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
    ) -> None:
        self.config = config
        self.db = db
        self.store = PodStore(db)
        self.runtime = runtime
        self.notify = notify
        self.tasks: dict[str, PodTask] = {}
        self.detaching = False
        self._db_limiter = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None

    # --- database access, off the event loop -------------------------------------------------

    async def _db(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._db_limiter)

    async def _record(self, change: Callable[[Transaction], None]) -> None:
        def run() -> None:
            with self.db.transaction() as tx:
                change(tx)

        with trio.CancelScope(shield=True):  # a half-recorded transition is worse than a delay
            await self._db(run)
        self.notify()

    async def resolve(self, ref: str) -> PodRecord:
        return await self._db(lambda: self.store.resolve(ref))

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
        pods of one priority in parallel."""
        for priority in sorted({t.pod.priority for t in self.tasks.values()}, reverse=True):
            async with trio.open_nursery() as nursery:
                for task in [t for t in self.tasks.values() if t.pod.priority == priority]:
                    nursery.start_soon(self._stop_task, task, grace)

    async def start_boot_pods(self) -> None:
        """Start the pods marked with ``enable``: by ascending priority; the pods of one
        priority in parallel (at most ``boot.parallel`` at once); a group only once every pod
        of the one before is running or has failed."""
        pods = await self._db(self.store.all)
        boot = [p for p in pods if p.boot and p.uuid not in self.tasks]
        limiter = trio.CapacityLimiter(self.config.int("boot.parallel"))

        async def start_one(pod: PodRecord) -> None:
            async with limiter:
                try:
                    await self.start(pod.uuid)
                except JetpackError as exc:
                    log.error("boot pod did not start", pod=pod.uuid, pod_name=pod.name,
                              error=str(exc))

        for priority in sorted({p.priority for p in boot}):
            async with trio.open_nursery() as nursery:
                for pod in [p for p in boot if p.priority == priority]:
                    nursery.start_soon(start_one, pod)

    # --- commands ---------------------------------------------------------------------------

    async def start(self, ref: str) -> PodRecord:
        """Start a prepared, exited or failed pod; returns once every app runs (or ran)."""
        pod = await self.resolve(ref)
        if pod.uuid in self.tasks:
            raise ConflictError(f"pod {pod.name} is already {pod.state}")
        if pod.state in LIVE_STATES:
            raise ConflictError(f"pod {pod.name} is {pod.state} under another supervisor")
        assert self._nursery is not None, "PodManager.run is not running"
        await self._nursery.start(self._run_pod, pod, None)
        return await self._db(lambda: self.store.get(pod.uuid))

    async def stop(self, ref: str, grace: float | None = None) -> PodRecord:
        """Stop a pod; returns once every app's exit is confirmed and the sandbox is gone."""
        pod = await self.resolve(ref)
        task = self.tasks.get(pod.uuid)
        if task is not None:
            await self._stop_task(task, grace)
        return await self._db(lambda: self.store.get(pod.uuid))

    async def wait(self, ref: str) -> PodRecord:
        """Wait until the pod is no longer running (returns at once if it is not)."""
        pod = await self.resolve(ref)
        task = self.tasks.get(pod.uuid)
        if task is not None:
            await task.done.wait()
        return await self._db(lambda: self.store.get(pod.uuid))

    async def kill(self, ref: str, signum: int) -> PodRecord:
        pod = await self.resolve(ref)
        task = self.tasks.get(pod.uuid)
        if task is None:
            raise ConflictError(f"pod {pod.name} is not running ({pod.state})")
        for process in list(task.processes.values()):
            await self.runtime.signal_app(task.pod, process, signum)
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
        task = PodTask(pod, sandbox=dict(pod.runtime) if adopted is not None else {})
        self.tasks[pod.uuid] = task
        bound = log.bind(pod=pod.uuid, pod_name=pod.name)
        reported = False
        try:
            if adopted is None:
                await self._record(lambda tx: self.store.transition(tx, pod, "starting"))
                try:
                    task.sandbox = await self.runtime.create_sandbox(pod)
                except JetpackError as exc:
                    task.failed, task.failure = True, f"sandbox: {exc}"
                    bound.error("pod sandbox failed", error=str(exc))
                    await self._finish(task)
                    task_status.started(task)
                    reported = True
                    return
                sandbox = task.sandbox
                await self._record(lambda tx: self.store.set_runtime(tx, pod.uuid, sandbox))
            async with trio.open_nursery() as apps:
                for app in pod.apps:
                    process = adopted.get(app.name) if adopted is not None else None
                    try:
                        await apps.start(self._run_app, task, app, process, adopted is not None)
                    except JetpackError as exc:
                        task.failed, task.failure = True, f"app {app.name}: {exc}"
                        bound.error("app failed to start", app=app.name, error=str(exc))
                        apps.start_soon(self._stop_apps, task, 0.0)
                        break
                if not task.stopping and adopted is None:
                    await self._record(lambda tx: self.store.transition(tx, pod, "running"))
                task_status.started(task)
                reported = True
            if self.detaching:
                return
            await self._finish(task)
        finally:
            if not reported:
                task_status.started(task)
            self.tasks.pop(pod.uuid, None)
            task.done.set()

    async def _finish(self, task: PodTask) -> None:
        """Tear the sandbox down (shielded) and record the pod's final state."""
        pod = task.pod
        with trio.CancelScope(shield=True):
            if task.sandbox:
                try:
                    await self.runtime.destroy_sandbox(pod, task.sandbox)
                except JetpackError as exc:
                    log.error("pod teardown failed", pod=pod.uuid, error=str(exc))
            final = "failed" if task.failed else "exited"
            extra = {"reason": task.failure} if task.failure else {}

            def record(tx: Transaction) -> None:
                self.store.set_runtime(tx, pod.uuid, {})
                self.store.transition(tx, pod, final, **extra)

            await self._record(record)

    async def _stop_task(self, task: PodTask, grace: float | None) -> None:
        """Stop the pod's apps and wait until the pod task has recorded its end."""
        await self._stop_apps(task, grace)
        await task.done.wait()

    async def _stop_apps(self, task: PodTask, grace: float | None) -> None:
        """Stop every app (SIGTERM, ``grace`` seconds, SIGKILL); None: ``pod.stop-timeout``."""
        if grace is None:
            grace = self.config.duration("pod.stop-timeout")
        if task.stopping:
            return
        task.stopping = True
        if task.pod.state in ("starting", "running"):
            await self._record(lambda tx: self.store.transition(tx, task.pod, "stopping"))
        for scope in task.restart_waits:
            scope.cancel()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for process in list(task.processes.values()):
                    nursery.start_soon(self.runtime.stop_app, task.pod, process, grace)

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
        pod = task.pod
        policy = RestartPolicy.parse(str(pod.options.get("restart", "never")))
        backoff = Backoff(
            initial=self.config.duration("restart.delay"),
            cap=self.config.duration("restart.max-delay"),
            reset_after=self.config.duration("restart.reset-after"),
        )
        restarts = app.restarts if adopted else 0
        reported = False
        unknown_exit = adopted and process is None
        while True:
            if unknown_exit:
                status: ExitStatus | None = None
            else:
                if process is None:
                    try:
                        process = await self.runtime.start_app(pod, task.sandbox, app)
                    except JetpackError as exc:
                        if not reported:
                            raise  # the first start: _run_pod reports it
                        # A restart that cannot start (e.g. a volume source the pod swapped
                        # for a symlink) fails the pod, never the supervisor.
                        log.error("app failed to restart", pod=pod.uuid, app=app.name,
                                  error=str(exc))
                        task.failed, task.failure = True, f"app {app.name}: {exc}"
                        self._stop_rest(task)
                        return
                    await self._app_started(pod, app, process, restarts)
                task.processes[app.name] = process
                if not reported:
                    task_status.started()
                    reported = True
                began = trio.current_time()
                status = await self.runtime.wait_app(pod, process)
                task.processes.pop(app.name, None)
                uptime = trio.current_time() - began
            await self._app_exited(pod, app, status)
            if not reported:
                task_status.started()
                reported = True
            process, unknown_exit = None, False
            failed = status is None or status.failed
            if task.stopping:
                return
            if not policy.wants_restart(failed=failed, restarts_so_far=restarts):
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
                return

    def _stop_rest(self, task: PodTask) -> None:
        """A failed pod stops its other apps (the pod fails as a unit)."""
        if self._nursery is not None and task.processes:
            self._nursery.start_soon(self._stop_apps, task, None)
        else:
            task.stopping = True

    async def _app_started(
        self, pod: PodRecord, app: AppRecord, process: AppProcess, restarts: int
    ) -> None:
        app.state, app.pid, app.pid_start = "running", process.pid, process.start_time
        app.process = dict(process.state.get("process", {}))
        app.exit_status = app.signal = None
        app.restarts = restarts

        def record(tx: Transaction) -> None:
            self.store.update_app(tx, pod.uuid, app)
            tx.event("app.started", pod=pod.uuid, pod_name=pod.name, app=app.name,
                     image=app.image_id, pid=process.pid)

        await self._record(record)

    async def _app_exited(self, pod: PodRecord, app: AppRecord, status: ExitStatus | None
                          ) -> None:
        app.state, app.pid, app.pid_start = "exited", None, None
        app.process = {}
        app.exit_status = status.code if status is not None else None
        app.signal = status.signal if status is not None else None
        payload: dict[str, Any] = (
            status.payload() if status is not None else {"reason": UNKNOWN_EXIT}
        )

        def record(tx: Transaction) -> None:
            self.store.update_app(tx, pod.uuid, app)
            tx.event("app.exited", pod=pod.uuid, pod_name=pod.name, app=app.name,
                     image=app.image_id, **payload)

        await self._record(record)

    # --- adoption ---------------------------------------------------------------------------

    async def adopt_all(self) -> None:
        """Adopt the pods a previous supervisor left running; reconcile those that are gone."""
        assert self._nursery is not None
        pods = await self._db(self.store.all)
        for pod in pods:
            if pod.state not in LIVE_STATES:
                continue
            try:
                processes = await self.runtime.recover(pod, pod.runtime)
            except JetpackError as exc:
                log.error("pod recovery failed", pod=pod.uuid, error=str(exc))
                processes = None
            if not processes:
                await self._reconcile_gone(pod)
                continue
            await self._record(_adopted_event(pod, sorted(processes)))
            await self._nursery.start(self._run_pod, pod, processes)

    async def _reconcile_gone(self, pod: PodRecord) -> None:
        """A pod recorded as running whose processes are gone (host crash or reboot)."""
        with trio.CancelScope(shield=True):
            if pod.runtime:
                try:
                    await self.runtime.destroy_sandbox(pod, pod.runtime)
                except JetpackError as exc:
                    log.error("cleanup of a vanished pod failed", pod=pod.uuid, error=str(exc))

            def record(tx: Transaction) -> None:
                for app in pod.apps:
                    if app.state in ("running", "restarting"):
                        app.state, app.pid, app.pid_start = "exited", None, None
                        app.exit_status = app.signal = None
                        self.store.update_app(tx, pod.uuid, app)
                        tx.event("app.exited", pod=pod.uuid, pod_name=pod.name, app=app.name,
                                 image=app.image_id, reason=UNKNOWN_EXIT)
                self.store.set_runtime(tx, pod.uuid, {})
                self.store.transition(tx, pod, "exited", reason=UNKNOWN_EXIT)

            await self._record(record)



def _adopted_event(pod: PodRecord, apps: list[str]) -> Callable[[Transaction], None]:
    def record(tx: Transaction) -> None:
        tx.event("pod.adopted", pod=pod.uuid, pod_name=pod.name, apps=apps)

    return record
