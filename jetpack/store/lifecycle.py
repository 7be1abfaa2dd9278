"""Pod removal and garbage collection from the command line: ``destroy`` (stopping a running
pod through the supervisor first), ``gc`` of long-exited pods and of the unused pod network.

A pod's row goes before its files (and prepare writes its files before its row), so an
interrupted command leaves at worst files no row names, which ``gc`` removes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from jetpack.config import Config
from jetpack.errors import ConflictError, SupervisorError
from jetpack.killpoint import killpoint
from jetpack.state import StateDB
from jetpack.store.images import ImageStore
from jetpack.store.pods import PodRecord, PodStore, pod_files_lock

LIVE = ("starting", "running", "stopping")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def destroy_pod(config: Config, state: StateDB, images: ImageStore, pod: PodRecord,
                stop: Callable[[PodRecord], None] | None = None, *, network: bool = True
                ) -> None:
    """Stop the pod (``stop``: through the supervisor) when it runs, then remove its clones,
    files and row (which releases its address and forwards), then (``network``) what the
    network keeps of it (``forget_network``; the supervisor does that after answering)."""
    store = PodStore(state)
    # An ended pod whose sandbox is still recorded is being torn down by the supervisor (or
    # was, when it died): its stop returns once that is done.
    if pod.state in LIVE or (pod.runtime and stop is not None):
        if stop is None:
            raise ConflictError(f"pod {pod.name} is {pod.state}", hint="stop it first")
        try:
            stop(pod)
        except SupervisorError as exc:
            doing = pod.state if pod.state in LIVE else "ended, its sandbox not torn down,"
            raise ConflictError(
                f"pod {pod.name} is {doing} and the supervisor cannot stop it: {exc}",
                hint="start the supervisor ('jetpack daemon'): it reconciles pods left behind",
            ) from None
        pod = store.get(pod.uuid)
        if pod.state in LIVE:
            raise ConflictError(f"pod {pod.name} is still {pod.state}")
    with state.transaction() as tx:
        store.delete(tx, pod)
    killpoint("destroy.deleted")
    images.destroy_pod_clones(pod.uuid)
    if network and pod.ip is not None:
        forget_network(config, pod)


def forget_network(config: Config, pod: PodRecord) -> None:
    """What the network keeps of a stopped pod for its next start (its anti-spoofing chain):
    gone with the pod. A failure leaves only that inert chain, which the next supervisor start
    or ``gc --network`` removes (``prune_pod_rules``): the pod is destroyed all the same."""
    from jetpack.errors import NetworkError
    from jetpack.stage1.drivers import network_backend

    try:
        network_backend(config).forget(pod.uuid, pod.ip)
    except NetworkError:
        pass


def gc_pods(config: Config, state: StateDB, images: ImageStore, grace: float) -> list[str]:
    """Destroy pods that exited (or failed) longer than ``grace`` seconds ago."""
    done = []
    cutoff = time.time() - grace
    for pod in PodStore(state).all():
        # (a pod whose sandbox is still recorded is the supervisor's to tear down first)
        if pod.state in ("exited", "failed") and not pod.runtime \
                and (pod.exited or pod.created) < cutoff:
            destroy_pod(config, state, images, pod)
            killpoint("gc.pod-removed")
            done.append(f"removed pod {pod.uuid} ({pod.name})")
    return done + gc_pod_leftovers(config, state, images) + gc_pod_cgroups(state)


def gc_pod_leftovers(config: Config, state: StateDB, images: ImageStore) -> list[str]:
    """Remove the files (clones, directories) of pods no row names: what a prepare or
    destroy killed midway left."""
    def unnamed() -> list[str]:
        known = {pod.uuid for pod in PodStore(state).all()}
        pods = config.root / "pods"
        entries = sorted(p.name for p in pods.iterdir()) if pods.is_dir() else []
        return [uuid for uuid in entries if _UUID.fullmatch(uuid) and uuid not in known]

    done: list[str] = []
    if not unnamed():  # the usual case: no lock taken (nor its file made)
        return done
    with pod_files_lock(config.root, exclusive=True):
        for uuid in unnamed():  # again, now that no prepare is between clone and row
            images.destroy_pod_clones(uuid)
            done.append(f"removed leftover files of pod {uuid}")
    return done


def gc_pod_cgroups(state: StateDB) -> list[str]:
    """Remove the cgroups of this host's pods that are not running: pods whose row says so,
    and pods the event log names that no row does (destroyed). A teardown that failed midway
    leaves the cgroup behind, and nothing else removes it. Cgroups of pods this state root
    never named are left alone: another jetpack (another state root) on the machine may own
    them, and the cgroup tree is shared."""
    from jetpack.errors import IsolationError
    from jetpack.stage1.cgroups import PodCgroup, leftover_cgroups

    try:
        present = {p.name for p in leftover_cgroups()}
    except IsolationError:  # no cgroup hierarchy (no /proc/self/mountinfo: FreeBSD)
        return []
    if not present:
        return []
    rows = {pod.uuid: pod.state for pod in PodStore(state).all()}
    named = {str(row["pod"]) for row in state.query(
        "SELECT DISTINCT pod FROM events WHERE pod IS NOT NULL")}
    done = []
    for uuid in sorted(present):
        # not "prepared": a start may make its cgroup right now (it is "starting" only then)
        if rows.get(uuid, "destroyed") not in ("exited", "failed", "destroyed") \
                or (uuid not in rows and uuid not in named):
            continue
        try:
            PodCgroup.for_pod(uuid).remove()
        except IsolationError as exc:
            done.append(f"cgroup of pod {uuid} kept: {exc}")
            continue
        done.append(f"removed the leftover cgroup of pod {uuid}")
    return done


def gc_network(config: Config, state: StateDB) -> list[str]:
    """Remove the pod bridge and jetpack's firewall table when no pod is running."""
    from jetpack.stage1.drivers import network_backend

    running = [p.name for p in PodStore(state).all() if p.state in LIVE]
    if running:
        return [f"network kept: pods running ({', '.join(running)})"]
    return network_backend(config).teardown_host()
