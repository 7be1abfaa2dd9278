"""Prometheus metrics at ``/metrics`` (text exposition), one ``CollectorRegistry`` per
supervisor (never prometheus-client's global one: two supervisors in one process, as the tests
run them, must not share counters).

Counts come from the event log as the hub publishes it (``EventHub.observers``, called in the
trio thread, in seq order, exactly once per event): the metrics say what the events say, and
the pod manager needs no hook. Gauges are computed per scrape: pod states from one
``GROUP BY`` in the database thread, usage (memory, CPU time) of each running pod from its
driver (``stage1.drivers.pod_usage``: cgroup files, ``rctl -u``) in a worker thread, so a scrape
never blocks the event loop. docs/metrics.md documents each metric.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jetpack.stage1.base import SandboxHandle
from jetpack.stage1.usage import PodUsage
from jetpack.store.pods import POD_STATES
from jetpack.supervisor.api import Request, Response, Router
from jetpack.supervisor.events import Entry, EventHub
from jetpack.supervisor.pods import PodManager

START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of ``jetpack_pod_start_seconds``; ``+Inf`` follows."""

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus scrapes (prometheus-client's CONTENT_TYPE_LATEST moved to
1.0.0, which older servers do not negotiate; our names need none of its escaping)."""

EXIT_REASONS = ("success", "failure", "signal", "unknown")
"""``jetpack_app_exits_total{reason}``: exit status 0, another exit status, killed by a signal,
or no status known (the app ended while no supervisor watched it, or its runtime lost it)."""


@dataclass
class Snapshot:
    """What one scrape computed off the event loop."""

    states: dict[str, int] = field(default_factory=dict)
    usage: list[tuple[str, str, PodUsage]] = field(default_factory=list)


def exit_reason(payload: dict[str, Any]) -> str:
    """The ``reason`` label of an ``app.exited`` event's payload."""
    if payload.get("signal") is not None:
        return "signal"
    status = payload.get("exit_status")
    if status is None:
        return "unknown"
    return "success" if status == 0 else "failure"


class SupervisorMetrics:
    """The supervisor's metrics: observes the hub, renders a scrape."""

    def __init__(self, manager: PodManager, hub: EventHub) -> None:
        self.manager = manager
        self.hub = hub
        self.pod_starts = 0
        self.app_restarts = 0
        self.app_exits = dict.fromkeys(EXIT_REASONS, 0)
        self.mds_requests: dict[str, int] = {}
        self.start_counts = [0] * (len(START_BUCKETS) + 1)  # per bucket, not cumulative
        self.start_sum = 0.0
        self._starting: dict[str, datetime] = {}
        self._snapshot = Snapshot()
        self._lock = trio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        hub.observers.append(self.observe)

    # ----------------------------------------------------------------------- counting

    def observe(self, entry: Entry) -> None:
        """One published event (the hub calls this in seq order)."""
        event = entry.event
        kind, pod = event.type, event.pod or ""
        if kind == "pod.starting":
            self._starting[pod] = _parse_time(event.time)
        elif kind == "pod.started":
            self.pod_starts += 1
            began = self._starting.pop(pod, None)
            if began is not None:
                self._observe_start((_parse_time(event.time) - began).total_seconds())
        elif kind in ("pod.exited", "pod.failed", "pod.destroyed"):
            self._starting.pop(pod, None)
        elif kind == "app.exited":
            self.app_exits[exit_reason(dict(event.payload or {}))] += 1
        elif kind == "app.restarting":
            self.app_restarts += 1

    def _observe_start(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.start_counts[bisect.bisect_left(START_BUCKETS, seconds)] += 1
        self.start_sum += seconds

    def count_mds(self, status: int) -> None:
        """One metadata service answer (``MetadataService.on_response``)."""
        code = str(status)
        self.mds_requests[code] = self.mds_requests.get(code, 0) + 1

    # ----------------------------------------------------------------------- scraping

    async def render(self) -> bytes:
        """The text exposition; the database and the sandboxes are read off the loop."""
        async with self._lock:
            states = await self.manager.in_db_thread(self._state_counts)
            live = [(uuid, task.pod.name, dict(task.sandbox))
                    for uuid, task in list(self.manager.tasks.items()) if task.sandbox]
            usage = await trio.to_thread.run_sync(_read_usage, live)
            self._snapshot = Snapshot(states, usage)
            return generate_latest(self.registry)

    def _state_counts(self) -> dict[str, int]:
        rows = self.manager.db.query("SELECT state, COUNT(*) FROM pods GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def families(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        pods = GaugeMetricFamily("jetpack_pods", "Pods by state (every state, 0 included).",
                                 labels=["state"])
        for state in POD_STATES:
            pods.add_metric([state], snapshot.states.get(state, 0))
        yield pods
        yield CounterMetricFamily("jetpack_pod_starts",
                                  "Pods that reached running (pod.started) since the "
                                  "supervisor started.", value=self.pod_starts)
        cumulative, buckets = 0, []
        for bound, count in zip((*START_BUCKETS, float("inf")), self.start_counts,
                                strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        yield HistogramMetricFamily("jetpack_pod_start_seconds",
                                    "Seconds from pod.starting to pod.started.",
                                    buckets=buckets, sum_value=self.start_sum)
        exits = CounterMetricFamily("jetpack_app_exits",
                                    "App exits by reason: success (status 0), failure (another "
                                    "status), signal, unknown.", labels=["reason"])
        for reason in EXIT_REASONS:
            exits.add_metric([reason], self.app_exits[reason])
        yield exits
        yield CounterMetricFamily("jetpack_app_restarts",
                                  "App restarts by a pod's restart policy.",
                                  value=self.app_restarts)
        yield GaugeMetricFamily("jetpack_events_last_seq",
                                "Seq of the last event published.", value=self.hub.last_published)
        yield GaugeMetricFamily("jetpack_event_subscribers",
                                "Open /v1/events streams.", value=self.hub.subscriber_count)
        mds = CounterMetricFamily("jetpack_mds_requests",
                                  "Metadata service answers by HTTP status code.",
                                  labels=["code"])
        for code, count in sorted(self.mds_requests.items()):
            mds.add_metric([code], count)
        yield mds
        memory = GaugeMetricFamily("jetpack_pod_memory_bytes",
                                   "Memory a running pod uses (cgroup memory usage; "
                                   "rctl memoryuse).", labels=["pod", "name"])
        cpu = CounterMetricFamily("jetpack_pod_cpu_seconds",
                                  "CPU time a running pod used (cgroup; rctl cputime).",
                                  labels=["pod", "name"])
        for uuid, name, usage in snapshot.usage:
            if usage.memory_bytes is not None:
                memory.add_metric([uuid, name], usage.memory_bytes)
            if usage.cpu_seconds is not None:
                cpu.add_metric([uuid, name], usage.cpu_seconds)
        yield memory
        yield cpu


class _Collector(Collector):
    def __init__(self, metrics: SupervisorMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics.families())


def _read_usage(live: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, PodUsage]]:
    from jetpack.errors import JetpackError
    from jetpack.stage1.drivers import pod_usage

    found = []
    for uuid, name, sandbox in live:
        try:
            usage = pod_usage(SandboxHandle.from_json(sandbox))
        except JetpackError:
            usage = None  # a malformed handle: the pod is left out of this scrape
        if usage is not None:
            found.append((uuid, name, usage))
    return found


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def add_metrics_route(router: Router, metrics: SupervisorMetrics) -> None:
    """``GET /metrics``: the Prometheus text exposition (format 0.0.4)."""

    async def scrape(request: Request) -> Response:
        del request
        return Response(await metrics.render(), content_type=CONTENT_TYPE)

    router.add("GET", "/metrics", scrape)
