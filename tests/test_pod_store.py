"""Pod rows: insert with event, unique names, references by UUID, prefix and name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jetpack.errors import AmbiguousError, ConflictError, NotFoundError, UsageError
from jetpack.stage1.base import Limits, PodVolume
from jetpack.state import StateDB
from jetpack.store.pods import (
    AppRecord,
    PodOptions,
    PodRecord,
    PodStore,
    PortBinding,
    validate_pod_name,
)


@pytest.fixture
def store(tmp_path: Path) -> PodStore:
    db = StateDB.for_root(tmp_path, create=True)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO images (id, name, labels, manifest, size, created, storage)"
            " VALUES ('sha512-0123', 'example.com/busybox', '{}', '{}', 1, 0, 'x')"
        )
    return PodStore(db)


def add(store: PodStore, uuid: str, name: str) -> PodRecord:
    pod = PodRecord(uuid=uuid, name=name, state="prepared", manifest="{}",
                    options=PodOptions(restart="on-failure:3"),
                    apps=[AppRecord("busybox", "sha512-0123"), AppRecord("side", "sha512-0123")])
    with store.state.transaction() as tx:
        store.insert(tx, pod)
    return pod


def test_insert_records_pod_apps_and_event(store: PodStore) -> None:
    add(store, "0f0e0d0c-0000-4000-8000-000000000001", "web")
    pod = store.resolve("web")
    assert [a.name for a in pod.apps] == ["busybox", "side"]
    assert pod.options == PodOptions(restart="on-failure:3")
    obj = pod.to_json_obj()
    assert obj["uuid"] == "0f0e0d0c-0000-4000-8000-000000000001"
    assert obj["ip"] is None
    assert obj["apps"][0] == {"name": "busybox", "image": "sha512-0123", "state": "prepared",
                              "exit_status": None, "signal": None, "restarts": 0}
    json.dumps(obj)
    (event,) = store.state.events_since(0)
    assert event.type == "pod.prepared"
    assert event.pod == pod.uuid
    assert event.pod_name == "web"


def test_names_are_unique(store: PodStore) -> None:
    add(store, "0f0e0d0c-0000-4000-8000-000000000001", "web")
    with pytest.raises(ConflictError, match="already exists"):
        add(store, "0f0e0d0c-0000-4000-8000-000000000002", "web")
    assert len(store.all()) == 1
    assert [e.type for e in store.state.events_since(0)] == ["pod.prepared"]


def test_references(store: PodStore) -> None:
    a = add(store, "aaaa1111-0000-4000-8000-000000000001", "one")
    add(store, "aaaa2222-0000-4000-8000-000000000002", "two")
    assert store.resolve(a.uuid).name == "one"
    assert store.resolve("aaaa1").name == "one"
    assert store.resolve("AAAA2").name == "two"
    with pytest.raises(AmbiguousError) as info:
        store.resolve("aaaa")
    assert len(info.value.candidates) == 2
    with pytest.raises(NotFoundError):
        store.resolve("bbbb")
    with pytest.raises(NotFoundError):
        store.resolve("aa")  # too short to be a prefix, and no such name


def test_transition_stamps_and_events(store: PodStore) -> None:
    pod = add(store, "aaaa1111-0000-4000-8000-000000000001", "one")
    with store.state.transaction() as tx:
        store.transition(tx, pod, "starting")
        store.transition(tx, pod, "running")
    again = store.get(pod.uuid)
    assert again.state == "running"
    assert again.started is not None
    assert [e.type for e in store.state.events_since(1)] == ["pod.starting", "pod.started"]


@pytest.mark.parametrize("name", ["Web", "-web", "web-", "we b", "", "a" * 64, "web..x"])
def test_bad_pod_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_pod_name(name)


@pytest.mark.parametrize("name", ["web", "web-1", "my.pod_2", "a" * 63])
def test_good_pod_names(name: str) -> None:
    assert validate_pod_name(name) == name


def test_options_written_by_an_older_jetpack_still_load(store: PodStore) -> None:
    # The untyped bag an older prepare wrote (no tty, no isolator warnings), and a ``run -t``
    # that added tty with raw SQL.
    add(store, "0f0e0d0c-0000-4000-8000-000000000003", "old")
    old = {"restart": "always", "limits": {"memory_bytes": 64, "cpu_millicores": None,
                                           "pids": 10},
           "ports": [{"name": "http", "app": "web", "protocol": "tcp", "pod_port": 80,
                      "host_port": 8080, "host_ip": None}],
           "sandbox": {"volumes": [{"name": "data", "kind": "empty", "source": "",
                                    "read_only": False, "recursive": True, "mode": 493,
                                    "uid": 0, "gid": 0}], "annotations": {"a": "b"}},
           "keep_image_etc": True}
    with store.state.transaction() as tx:
        tx.execute("UPDATE pods SET options = ? WHERE name = 'old'", (json.dumps(old),))
    options = store.resolve("old").options
    assert options == PodOptions(
        restart="always", limits=Limits(64, None, 10),
        ports=(PortBinding("http", "web", "tcp", 80, 8080),),
        volumes=(PodVolume("data", "empty", mode=0o755),), annotations={"a": "b"},
        keep_image_etc=True)
    assert PodOptions.from_json(options.to_json()) == options
    with store.state.transaction() as tx:
        store.set_options(tx, store.resolve("old"), PodOptions(tty=True))
    assert store.resolve("old").options.tty


def test_destroy_of_an_ended_pod_still_torn_down_goes_through_the_supervisor(
    store: PodStore, tmp_path: Path
) -> None:
    """A pod recorded exited with its sandbox still recorded is being torn down by the
    supervisor: ``destroy`` asks it (its stop returns once the teardown is done) before
    removing anything, and refuses, naming why, when no supervisor answers."""
    from jetpack.config import load_config
    from jetpack.errors import SupervisorError
    from jetpack.store.lifecycle import destroy_pod

    config = load_config(None, [f"root.path={tmp_path}"], environ={})
    done: list[tuple[str, str]] = []

    class Images:
        def destroy_pod_clones(self, uuid: str) -> None:
            done.append(("clones", uuid))

    def ended(uuid: str, name: str) -> PodRecord:
        add(store, uuid, name)
        with store.state.transaction() as tx:
            store.set_runtime(tx, uuid, {"driver": "linux"})
            tx.execute("UPDATE pods SET state = 'exited' WHERE uuid = ?", (uuid,))
        return store.get(uuid)

    def supervisor(pod: PodRecord) -> None:  # as its stop: once the teardown is done
        done.append(("stop", pod.uuid))
        with store.state.transaction() as tx:
            store.set_runtime(tx, pod.uuid, {})

    def absent(pod: PodRecord) -> None:
        raise SupervisorError("no supervisor is running")

    first = ended("0f0e0d0c-0000-4000-8000-0000000000a1", "ended")
    destroy_pod(config, store.state, Images(), first, supervisor, network=False)  # type: ignore[arg-type]  # a stand-in ImageStore
    assert done == [("stop", first.uuid), ("clones", first.uuid)]
    second = ended("0f0e0d0c-0000-4000-8000-0000000000a2", "cut")
    with pytest.raises(ConflictError, match="not torn down"):
        destroy_pod(config, store.state, Images(), second, absent, network=False)  # type: ignore[arg-type]  # a stand-in ImageStore
    assert store.get(second.uuid).state == "exited"  # nothing removed
    assert done[2:] == []
