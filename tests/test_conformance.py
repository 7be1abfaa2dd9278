"""appc executor conformance (docs/conformance.md): mount points fulfilled as rkt does (a pod
volume of the mount point's name, else an implicit empty volume), the ACE validator's
two-app volume scenario in real pods on both storage drivers, and the table of
docs/conformance.md checked against the tests it cites."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from acis import aci_from_entries, dir_entry, manifest, manifest_entry
from podhost import Host

REPO = Path(__file__).resolve().parent.parent

# /db must be a mount point (field 5 of /proc/self/mountinfo), as the ACE validator checks.
IS_MOUNT = "grep -q \"^[^ ]* [^ ]* [^ ]* [^ ]* /db \" /proc/self/mountinfo"


def _import_app(host: Host, tmp_path: Path, name: str, script: str,
                points: list[dict[str, Any]]) -> None:
    aci = aci_from_entries(tmp_path / f"{name.rsplit('/', 1)[-1]}.aci", [
        manifest_entry(manifest(name, dependencies=[{"imageName": "example.com/busybox"}],
                                app={"exec": ["/bin/sh", "-c", script], "user": "0",
                                     "group": "0", "mountPoints": points})),
        dir_entry("rootfs")])
    host.jp("import", str(aci))


def _validator_images(host: Host, tmp_path: Path, *, read_only: bool = False) -> None:
    """ace-validator-main and -sidekick reduced to their volume check: main writes /db/x,
    sidekick waits for it and reads it; each first checks /db is a mount point."""
    points = [{"name": "database", "path": "/db", "readOnly": read_only}]
    _import_app(host, tmp_path, "example.com/ace-main",
                f"{IS_MOUNT} || exit 10; echo written-by-main > /db/x || exit 11; echo main-ok",
                points)
    _import_app(host, tmp_path, "example.com/ace-sidekick",
                f"{IS_MOUNT} || exit 20; i=0; while [ ! -f /db/x ]; do i=$((i+1)); "
                "[ $i -gt 300 ] && exit 21; sleep 0.1; done; echo sidekick read $(cat /db/x)",
                points)


def _pod_manifest(host: Host, pod: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(host.jp("manifest", pod).stdout)
    return data


@pytest.mark.parametrize("storage", ["dir", "zfs"], indirect=True)
def test_ace_validator_volume_from_the_pod_volume_of_the_mount_points_name(
    host: Host, tmp_path: Path
) -> None:
    """The ACE validator as rkt ran it: two apps with mount point ``database`` at /db, a pod
    volume ``database`` (empty) and no ``mounts``: /db is a mount point in both apps and the
    file one writes the other reads."""
    _validator_images(host, tmp_path)
    host.start()
    prepared = host.jp("prepare", "example.com/ace-main", "--app-name", "main",
                       "example.com/ace-sidekick", "--app-name", "sidekick",
                       "-v", "database,kind=empty,mode=0750,uid=7,gid=8")
    assert "implicit" not in prepared.stderr  # the pod volume fulfils both mount points
    pod = prepared.stdout.split()[-1]
    reified = _pod_manifest(host, pod)
    assert reified["volumes"] == [{"name": "database", "kind": "empty", "mode": "0750",
                                   "uid": 7, "gid": 8}]
    assert [a["mounts"] for a in reified["apps"]] == [[{"volume": "database", "path": "/db"}]] * 2
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "main-ok" in out.stdout
    assert "sidekick read written-by-main" in out.stdout
    host.jp("destroy", pod)


@pytest.mark.parametrize("storage", ["dir", "zfs"], indirect=True)
def test_mount_point_without_any_volume_gets_an_implicit_empty_volume(
    host: Host, tmp_path: Path
) -> None:
    """No pod volume at all: one implicit empty volume named after the mount point, shared by
    both apps, with a warning; the reified manifest shows it."""
    _validator_images(host, tmp_path)
    host.start()
    prepared = host.jp("prepare", "example.com/ace-main", "--app-name", "main",
                       "example.com/ace-sidekick", "--app-name", "sidekick")
    assert "implicit empty volume" in prepared.stderr
    assert "'database'" in prepared.stderr
    pod = prepared.stdout.split()[-1]
    reified = _pod_manifest(host, pod)
    assert reified["volumes"] == [{"name": "database", "kind": "empty", "mode": "0755",
                                   "uid": 0, "gid": 0}]
    assert [a["mounts"] for a in reified["apps"]] == [[{"volume": "database", "path": "/db"}]] * 2
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sidekick read written-by-main" in out.stdout
    host.jp("destroy", pod)


def test_read_only_mount_point_is_mounted_read_only(host: Host, tmp_path: Path) -> None:
    """A mount point the image declares read-only gets a read-only mount (of the pod volume
    of its name), while another app mounts the same volume writable."""
    _import_app(host, tmp_path, "example.com/reader",
                f"{IS_MOUNT} || exit 30; touch /db/y 2>/dev/null && exit 31; echo reader-ro",
                [{"name": "database", "path": "/db", "readOnly": True}])
    _import_app(host, tmp_path, "example.com/writer",
                f"{IS_MOUNT} || exit 40; touch /db/z || exit 41; echo writer-rw",
                [{"name": "database", "path": "/db"}])
    host.start()
    pod = host.jp("prepare", "example.com/reader", "example.com/writer",
                  "-v", "database,kind=empty").stdout.split()[-1]
    mounts = {a["name"]: a["mounts"] for a in _pod_manifest(host, pod)["apps"]}
    assert mounts == {"reader": [{"volume": "database", "path": "/db", "readOnly": True}],
                      "writer": [{"volume": "database", "path": "/db"}]}
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reader-ro" in out.stdout
    assert "writer-rw" in out.stdout
    host.jp("destroy", pod)


def test_pod_manifest_file_mount_points_fulfilled_like_the_command_line(
    host: Host, tmp_path: Path
) -> None:
    """``prepare -f``: a template with the ACE validator's pod (volume ``database``, no
    ``mounts``) and an app whose ``mountPoints`` come from the pod manifest itself, with no
    volume of its name (implicit). An explicit mount keeps its own volume."""
    _validator_images(host, tmp_path)
    template = {
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [
            {"name": "main", "image": {"name": "example.com/ace-main"}},
            {"name": "sidekick", "image": {"name": "example.com/ace-sidekick"}},
            {"name": "extra", "image": {"name": "example.com/busybox"},
             "app": {"exec": ["/bin/sh", "-c",
                              f"{IS_MOUNT} || exit 50; "
                              "grep -q \" /scratch \" /proc/self/mountinfo || exit 51; "
                              "ls /db /scratch >/dev/null && echo extra-ok"],
                     "user": "0", "group": "0",
                     "mountPoints": [{"name": "scratch", "path": "/scratch"},
                                     {"name": "database", "path": "/db"}]},
             "mounts": [{"volume": "other", "path": "/db"}]},
        ],
        "volumes": [{"name": "database", "kind": "empty"}, {"name": "other", "kind": "empty"}],
    }
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(template))
    host.start()
    prepared = host.jp("prepare", "-f", str(path))
    assert "'scratch'" in prepared.stderr
    assert "'database'" not in prepared.stderr
    pod = prepared.stdout.split()[-1]
    reified = _pod_manifest(host, pod)
    assert [v["name"] for v in reified["volumes"]] == ["database", "other", "scratch"]
    mounts = {a["name"]: a.get("mounts") for a in reified["apps"]}
    assert mounts == {"main": [{"volume": "database", "path": "/db"}],
                      "sidekick": [{"volume": "database", "path": "/db"}],
                      "extra": [{"volume": "other", "path": "/db"},
                                {"volume": "scratch", "path": "/scratch"}]}
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sidekick read written-by-main" in out.stdout
    assert "extra-ok" in out.stdout
    host.jp("destroy", pod)
