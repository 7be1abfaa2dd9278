"""Linux resource limits: one cgroup per pod (``jetpack/<pod uuid>``) on v1, v2 or hybrid hosts.

Memory, CPU and a pids limit (so a fork bomb stops at the pod), the device allow-list (v1
``devices`` controller, or an eBPF filter on v2), processes in, OOM kills counted, and removal that
kills what is left. Synchronous; callers run it through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

from jetpack.errors import IsolationError, ValidationError
from jetpack.stage1.base import DEFAULT_PIDS_LIMIT, Limits
from jetpack.stage1.devices import ALLOWED_DEVICES, attach_device_filter

__all__ = ["DEFAULT_PIDS_LIMIT", "Limits", "PodCgroup", "parse_bytes", "parse_millicores"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "jetpack"
CFS_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids", "devices")

Controller = Literal["memory", "cpu", "pids", "devices"]

# appc quantities (spec/ace.md, "Resource Isolators"): metric and binary suffixes, milli-units.
_SUFFIXES = {
    "": Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "K": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def parse_quantity(value: str | int | float, *, path: str = "quantity") -> Decimal:
    """An appc quantity (``64M``, ``123Mi``, ``500m``, ``0.5``, ``128974848``) as a number."""
    text = str(value).strip()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    suffix = text[len(number):]
    if suffix not in _SUFFIXES or not number:
        raise ValidationError(path, f"not a quantity: {value!r} (examples: 64M, 1Gi, 500m)")
    try:
        amount = Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation:
        raise ValidationError(path, f"not a quantity: {value!r}") from None
    if amount < 0 or not amount.is_finite():
        raise ValidationError(path, f"a quantity must not be negative: {value!r}")
    return amount


def parse_bytes(value: str | int | float, *, path: str = "limit") -> int:
    """A memory quantity in whole bytes (``64M`` → 64000000, ``64Mi`` → 67108864)."""
    return int(parse_quantity(value, path=path).to_integral_value(rounding="ROUND_CEILING"))


def parse_millicores(value: str | int | float, *, path: str = "limit") -> int:
    """A CPU quantity in thousandths of a core (``500m`` → 500, ``2`` → 2000)."""
    return int((parse_quantity(value, path=path) * 1000).to_integral_value(
        rounding="ROUND_CEILING"))


@dataclass(frozen=True)
class Layout:
    """Where each controller lives: a v1 hierarchy of its own, or the v2 unified one."""

    kind: Literal["v1", "v2", "hybrid", "none"]
    v1: dict[str, Path] = field(default_factory=dict)
    unified: Path | None = None
    unified_controllers: frozenset[str] = frozenset()

    def controller_dir(self, controller: str) -> tuple[Path, int] | None:
        """(hierarchy root, cgroup version) serving ``controller``, None when unavailable."""
        if controller in self.v1:
            return self.v1[controller], 1
        if self.unified is not None and controller in self.unified_controllers:
            return self.unified, 2
        return None


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def detect_layout(mountinfo: Path = Path("/proc/self/mountinfo")) -> Layout:
    """The host's cgroup layout from mountinfo: v1, v2, hybrid (v1 controllers + unified)."""
    v1: dict[str, Path] = {}
    unified: Path | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        raise IsolationError(f"cannot read {mountinfo}: {exc.strerror}") from None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point, fstype, options = Path(_unescape(fields[4])), tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            unified = mount_point
        elif fstype == "cgroup":
            for option in options:
                if option in CONTROLLERS:
                    v1.setdefault(option, mount_point)
    controllers: frozenset[str] = frozenset()
    if unified is not None:
        try:
            controllers = frozenset((unified / "cgroup.controllers").read_text().split())
        except OSError:
            controllers = frozenset()
    if v1 and unified is not None:
        kind: Literal["v1", "v2", "hybrid", "none"] = "hybrid"
    elif v1:
        kind = "v1"
    elif unified is not None:
        kind = "v2"
    else:
        kind = "none"
    return Layout(kind, v1, unified, controllers)


@functools.cache
def host_layout() -> Layout:
    """The host's layout, read once per process: hierarchies are mounted at boot, while
    mountinfo grows with every running pod (reading it per pod made each start O(pods))."""
    return detect_layout()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise IsolationError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class PodCgroup:
    """The cgroup ``jetpack/<pod uuid>`` in every hierarchy jetpack uses; holds no state."""

    name: str
    layout: Layout

    @classmethod
    def for_pod(cls, pod_uuid: str, layout: Layout | None = None) -> PodCgroup:
        return cls(f"{PARENT}/{pod_uuid.lower()}", layout or host_layout())

    def directories(self) -> list[Path]:
        """This cgroup's directory in each hierarchy (v1 controllers, then unified)."""
        roots = {self.layout.v1[c] for c in CONTROLLERS if c in self.layout.v1}
        if self.layout.unified is not None:
            # Also in hybrid layouts: the unified tree tracks every process of the pod and
            # gives remove() an atomic cgroup.kill.
            roots.add(self.layout.unified)
        return [root / self.name for root in sorted(roots)]

    def _dir(self, controller: Controller) -> tuple[Path, int]:
        found = self.layout.controller_dir(controller)
        if found is None:
            raise IsolationError(
                f"the {controller} cgroup controller is not available on this host",
                hint=f"mount it (v1) or enable it in {CGROUP_ROOT}/cgroup.subtree_control (v2)")
        return found[0] / self.name, found[1]

    def create(self, limits: Limits) -> None:
        """Make the cgroup (idempotent) and set ``limits``; a failure leaves nothing behind."""
        wanted: tuple[tuple[Controller, int | None], ...] = (
            ("memory", limits.memory_bytes), ("cpu", limits.cpu_millicores),
            ("pids", limits.pids))
        for controller, value in wanted:
            if value is not None:
                self._dir(controller)  # refuse before making anything
        self._device_policy()
        if self.layout.unified is not None:
            self._enable_v2_controllers()
        try:
            for directory in self.directories():
                directory.mkdir(parents=True, exist_ok=True)
            self.set_limits(limits)
            self.restrict_devices()
        except (IsolationError, OSError) as exc:
            self.remove()
            if isinstance(exc, OSError):
                raise IsolationError(f"cannot create cgroup {self.name}: {exc}") from None
            raise

    def _enable_v2_controllers(self) -> None:
        # v2 hands a controller to children only through each ancestor's subtree_control.
        assert self.layout.unified is not None
        wanted = [c for c in CONTROLLERS if c in self.layout.unified_controllers
                  and c not in self.layout.v1]
        if not wanted:
            return
        directory = self.layout.unified
        for part in Path(self.name).parts[:-1]:
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
            directory = directory / part
            directory.mkdir(exist_ok=True)
        _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def set_limits(self, limits: Limits) -> None:
        """Apply ``limits`` to an existing cgroup (None: unlimited)."""
        if limits.memory_bytes is not None or self.layout.controller_dir("memory"):
            self._set_memory(limits.memory_bytes)
        if limits.cpu_millicores is not None or self.layout.controller_dir("cpu"):
            self._set_cpu(limits.cpu_millicores)
        if limits.pids is not None or self.layout.controller_dir("pids"):
            directory, _ = self._dir("pids")
            _write(directory / "pids.max", "max" if limits.pids is None else str(limits.pids))

    def restrict_devices(self) -> None:
        """Allow the pod only ``ALLOWED_DEVICES``: a node made (CAP_MKNOD) or shipped in the pod
        opens nothing else. The v1 ``devices`` controller where mounted, else an eBPF filter on
        the cgroup2 directory (v2 has no devices controller)."""
        directory, kind = self._device_policy()
        if kind == "bpf":
            attach_device_filter(directory, ALLOWED_DEVICES)
            return
        _write(directory / "devices.deny", "a")
        for rule in ALLOWED_DEVICES:
            _write(directory / "devices.allow", rule.v1_line())

    def _device_policy(self) -> tuple[Path, Literal["v1", "bpf"]]:
        found = self.layout.controller_dir("devices")
        if found is not None:
            return found[0] / self.name, "v1"
        if self.layout.unified is not None:
            return self.layout.unified / self.name, "bpf"
        raise IsolationError(
            "no device policy is possible on this host: no devices cgroup controller (v1) and "
            "no cgroup2 hierarchy for a device filter",
            hint=f"mount the devices controller or a cgroup2 hierarchy under {CGROUP_ROOT}")

    def _set_memory(self, limit: int | None) -> None:
        directory, version = self._dir("memory")
        if version == 2:
            _write(directory / "memory.max", "max" if limit is None else str(limit))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0" if limit is not None else "max")
            return
        value = "-1" if limit is None else str(limit)
        memsw = directory / "memory.memsw.limit_in_bytes"
        # memsw (memory + swap) must stay >= the memory limit: raise it first, lower it last.
        if limit is None and memsw.exists():
            _write(memsw, value)
        _write(directory / "memory.limit_in_bytes", value)
        if limit is not None and memsw.exists():
            _write(memsw, value)  # no swapping around the limit

    def _set_cpu(self, millicores: int | None) -> None:
        directory, version = self._dir("cpu")
        quota = -1 if millicores is None else max(1000, millicores * CFS_PERIOD_US // 1000)
        if version == 2:
            _write(directory / "cpu.max",
                   f"{'max' if millicores is None else quota} {CFS_PERIOD_US}")
            return
        _write(directory / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(directory / "cpu.cfs_quota_us", str(quota))

    def add_process(self, pid: int) -> None:
        """Move process ``pid`` (and, from now on, its children) into the pod's cgroup."""
        for directory in self.directories():
            _write(directory / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        """Every process in the cgroup, in any hierarchy."""
        found: set[int] = set()
        for directory in self.directories():
            for procs in [directory / "cgroup.procs",
                          *directory.glob("**/cgroup.procs")]:
                try:
                    found.update(int(p) for p in procs.read_text().split())
                except (OSError, ValueError):
                    continue
        return found

    def oom_events(self) -> int | None:
        """How many processes the kernel OOM-killed in this cgroup; None where not reported."""
        found = self.layout.controller_dir("memory")
        if found is None:
            return None
        directory = found[0] / self.name
        source = directory / ("memory.events" if found[1] == 2 else "memory.oom_control")
        try:
            text = source.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.directories())

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left in the cgroup, then remove it everywhere; idempotent."""
        deadline = time.monotonic() + timeout
        if self.layout.unified is not None:
            kill = self.layout.unified / self.name / "cgroup.kill"
            if kill.exists():
                try:
                    kill.write_text("1")
                except OSError:
                    pass  # kernels before 5.14 lack it; the loop below kills one by one
        self._kill_all(deadline, timeout)
        # Every hierarchy is tried even when one refuses, so one busy directory does not leave
        # the pod's cgroup behind in all the others; the first refusal is raised after.
        failure: IsolationError | None = None
        for directory in self.directories():
            try:
                self._rmdir_tree(directory, deadline, timeout)
            except IsolationError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _kill_all(self, deadline: float, timeout: float) -> None:
        while pids := self.pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise IsolationError(
                    f"cgroup {self.name} still holds processes {sorted(pids)[:10]} "
                    f"after {timeout:g}s")
            time.sleep(0.01)

    def _rmdir_tree(self, directory: Path, deadline: float, timeout: float) -> None:
        if not directory.is_dir():
            return
        for child in directory.iterdir():
            if child.is_dir():
                self._rmdir_tree(child, deadline, timeout)
        while True:
            try:
                directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # EBUSY while the last killed tasks finish exiting, or while a process that
                # joined after the kill above (an exec's helper, a restarting app) still runs.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise IsolationError(f"cannot remove cgroup {directory}: {exc.strerror}") \
                        from None
                self._kill_all(deadline, timeout)
                time.sleep(0.01)


def warm_moves(layout: Layout | None = None) -> None:
    """Move this process into the cgroup it already is in (one hierarchy): a no-op that makes
    the kernel start the RCU grace period that the next move into a pod's cgroup would wait
    for. Blocks for that grace period (5-15 ms): run it in a thread of its own.

    A write to cgroup.procs takes cgroup_threadgroup_rwsem (one for all hierarchies) for
    writing: percpu_down_write -> rcu_sync_enter waits for a grace period unless a writer
    passed within the last one, and holds cgroup_mutex meanwhile. A move that starts while
    this one waits queues on that mutex and then finds the grace period passed; one that
    starts within a grace period after it is fast too (measured on 6.18: 0.6 ms instead of
    6-15 ms). Best effort: nothing depends on it, so any error is ignored.
    """
    layout = layout or host_layout()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            roots = [layout.v1[c] for c in controllers.split(",") if c in layout.v1]
            if not controllers and layout.unified is not None:
                roots.append(layout.unified)
            if roots:
                (roots[0] / path.lstrip("/") / "cgroup.procs").write_text("0")
                return


def leftover_cgroups(layout: Layout | None = None) -> list[Path]:
    """Pod cgroups under ``jetpack/`` in any hierarchy (for ``gc`` and tests)."""
    layout = layout or host_layout()
    roots = set(layout.v1.values()) | ({layout.unified} if layout.unified else set())
    return sorted(p for root in roots for p in (root / PARENT).glob("*") if p.is_dir())
