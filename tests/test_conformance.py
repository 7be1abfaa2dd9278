"""appc executor conformance (docs/conformance.md): mount points fulfilled as rkt does (a pod
volume of the mount point's name, else an implicit empty volume), the ACE validator's two-app
volume scenario, socket activation, and the other requirements the table maps to a test, in
real pods; and the table itself checked against the tests it cites."""

from __future__ import annotations

import ast
import json
import re
import secrets
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from acis import aci_from_entries, dir_entry, file_entry, link_entry, manifest, manifest_entry
from conftest import Jetpack
from podhost import Host, http_get

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
    sidekick waits for it and reads it; each first checks /db is a mount point. Main also
    leaves /only-main in its rootfs, which sidekick must not see (each app its own rootfs)."""
    points = [{"name": "database", "path": "/db", "readOnly": read_only}]
    _import_app(host, tmp_path, "example.com/ace-main",
                f"{IS_MOUNT} || exit 10; echo perm=$(stat -c %a:%u:%g /db); touch /only-main; "
                "echo written-by-main > /db/x || exit 11; echo main-ok",
                points)
    _import_app(host, tmp_path, "example.com/ace-sidekick",
                f"{IS_MOUNT} || exit 20; i=0; while [ ! -f /db/x ]; do i=$((i+1)); "
                "[ $i -gt 300 ] && exit 21; sleep 0.1; done; echo sidekick read $(cat /db/x); "
                "[ -e /only-main ] && exit 22; echo own-rootfs",
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
    assert "perm=750:7:8" in out.stdout  # the empty volume's mode, uid and gid
    assert "own-rootfs" in out.stdout
    assert uuid.UUID(pod).version == 4  # an RFC 4122 UUID, random
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
    assert "perm=755:0:0" in out.stdout  # pods.md's defaults for an empty volume
    volume = host.jp.root / "pods" / pod / "volumes" / "database"
    assert (volume / "x").read_text() == "written-by-main\n"
    host.jp("destroy", pod)
    assert not volume.exists()  # an empty volume lives as long as its pod


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
    # reified: every image named by its ID, every mount point fulfilled by a volume
    assert all(a["image"]["id"].startswith("sha512-") for a in reified["apps"])
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


SOCKET_APP = {
    "ports": [{"name": "http", "protocol": "tcp", "port": 8080, "count": 2,
               "socketActivated": True},
              {"name": "plain", "protocol": "tcp", "port": 9000},
              {"name": "dns", "protocol": "udp", "port": 5353, "socketActivated": True}],
}


def _inodes(table: str, port: int, state: str) -> set[str]:
    """Inodes of the sockets in a /proc/net/{tcp,udp} dump bound to ``port`` in ``state``."""
    found = set()
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 9 and fields[1].endswith(f":{port:04X}") and fields[3] == state:
            found.add(fields[9])
    return found


def test_socket_activated_ports_are_passed_as_listening_descriptors(
    host: Host, tmp_path: Path
) -> None:
    """aci.md ``socketActivated``: the app gets, as descriptors 3, 4, 5, sockets listening on
    each port of its socket-activated ranges (``count`` 2: 8080 and 8081, then udp 5353), with
    LISTEN_FDS and LISTEN_PID (its own pid); a port without socketActivated gets none, and a
    pre-start handler gets no descriptors nor LISTEN_* variables."""
    script = ("echo fds=$LISTEN_FDS pid=$LISTEN_PID self=$$; echo open /proc/$$/fd/*; "
              "for fd in 3 4 5; do echo fd$fd=$(readlink /proc/$$/fd/$fd); done; "
              "echo ==tcp; cat /proc/net/tcp; echo ==udp; cat /proc/net/udp")
    _import_app(host, tmp_path, "example.com/activated", script, [])
    host.start()
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [{"name": "activated", "image": {"name": "example.com/activated"},
                  "app": {"exec": ["/bin/sh", "-c", script], "user": "0", "group": "0",
                          "eventHandlers": [{"name": "pre-start", "exec": [
                              "/bin/sh", "-c", "echo pre=${LISTEN_FDS:-none}; "
                              "readlink /proc/$$/fd/3 || echo pre-fd3=none"]}],
                          **SOCKET_APP}}]}))
    pod = host.jp("prepare", "-f", str(path)).stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "pre=none" in text
    assert "pre-fd3=none" in text
    env = re.search(r"^fds=(\S*) pid=(\S*) self=(\S*)$", text, re.MULTILINE)
    assert env is not None, text
    assert env.group(1) == "3", text
    assert env.group(2) == env.group(3)  # LISTEN_PID is the app's own pid
    # 0-2, the three sockets, and the directory the shell's own glob reads: nothing else (a
    # $(ls ...) would race its pipe's write end, open in the shell until its fork returns)
    opened = re.search(r"^open (.*)$", text, re.MULTILINE)
    assert opened is not None
    assert len(opened.group(1).split()) == 7, opened.group(1)
    fds = dict(re.findall(r"^fd(\d)=(.*)$", text, re.MULTILINE))
    tcp = text.split("==tcp")[1].split("==udp")[0]
    udp = text.split("==udp")[1]
    listen, unconnected = "0A", "07"
    for fd, table, port, state in (("3", tcp, 8080, listen), ("4", tcp, 8081, listen),
                                   ("5", udp, 5353, unconnected)):
        inode = re.fullmatch(r"socket:\[(\d+)\]", fds[fd])
        assert inode is not None, fds
        assert _inodes(table, port, state) == {inode.group(1)}, (fd, port, table)
    assert _inodes(tcp, 9000, listen) == set()
    host.jp("destroy", pod)


def test_port_names_must_be_unique_among_the_apps_of_a_pod(host: Host, tmp_path: Path) -> None:
    """pods.md: port names MUST be unique among apps within a pod; two apps declaring ``http``
    are refused, and renaming one in a pod manifest prepares the pod."""
    for name in ("web1", "web2"):
        aci = aci_from_entries(tmp_path / f"{name}.aci", [
            manifest_entry(manifest(f"example.com/{name}", dependencies=[
                {"imageName": "example.com/busybox"}], app={
                    "exec": ["/bin/true"], "user": "0", "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 80}]})),
            dir_entry("rootfs")])
        host.jp("import", str(aci))
    out = host.jp("prepare", "example.com/web1", "example.com/web2", check=False)
    assert out.returncode == 1
    assert "both declare a port named 'http'" in out.stderr
    assert json.loads(host.jp("list", "--json").stdout) == []
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [{"name": "web1", "image": {"name": "example.com/web1"}},
                 {"name": "web2", "image": {"name": "example.com/web2"}, "app": {
                     "exec": ["/bin/true"], "user": "0", "group": "0",
                     "ports": [{"name": "http2", "protocol": "tcp", "port": 81}]}}]}))
    host.jp("prepare", "-f", str(path))


def test_volume_targets_created_obscured_or_refused(host: Host, tmp_path: Path) -> None:
    """ace.md "Volume Setup": a missing target path is created with its parents (0:0, 0755);
    a non-empty directory's contents are obscured by the volume, with a warning. A target that
    is a file in the image is refused, naming it (jetpack does not delete image files to make
    room)."""
    aci = aci_from_entries(tmp_path / "targets.aci", [
        manifest_entry(manifest("example.com/targets", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/sh", "-c", "stat -c %n=%a:%u:%g /new /new/deep; "
                         "ls -A /srv/full | wc -l | sed s/^/full=/"],
                "user": "0", "group": "0",
                "mountPoints": [{"name": "deep", "path": "/new/deep/dir"},
                                {"name": "full", "path": "/srv/full"}]})),
        dir_entry("rootfs"), dir_entry("rootfs/srv"), dir_entry("rootfs/srv/full"),
        file_entry("rootfs/srv/full/old", b"image data"), file_entry("rootfs/srv/afile")])
    host.jp("import", str(aci))
    host.start()
    out = host.jp("run", "--rm", "example.com/targets", "-v", "deep,kind=empty",
                  "-v", "full,kind=empty", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "/new=755:0:0" in out.stdout
    assert "/new/deep=755:0:0" in out.stdout
    assert "full=0" in out.stdout  # /srv/full/old obscured by the empty volume
    # the user is told (the app's log, here the foreground run's output), for that one only
    assert "jetpack: volume full masks the existing files at /srv/full" in out.stdout
    assert "masks the existing files at /new" not in out.stdout
    out = host.jp("run", "--rm", "example.com/targets", "-v", "deep,kind=empty",
                  "-v", "full,kind=empty", "-m", "full:/srv/afile", check=False)
    assert out.returncode != 0
    assert "mount point /srv/afile is a file" in out.stdout + out.stderr


@pytest.fixture(params=["dir", "zfs"])
def store(request: pytest.FixtureRequest, root: None) -> Jetpack:
    """An initialized state root on each storage driver (no supervisor)."""
    jp: Jetpack = request.getfixturevalue(f"jetpack_{request.param}")
    jp("init")
    return jp


def test_dependencies_render_depth_first_and_replace_symlinks(store: Jetpack,
                                                               tmp_path: Path) -> None:
    """ace.md "Filesystem Setup": A -> [B, C], C -> [D] overrides in the order B, D, C, A; D's
    files are filtered by the pathWhitelist of C, which depends on it; a path an earlier
    dependency made a symlink to a directory is removed and replaced, never followed."""
    def image(name: str, files: dict[str, bytes], deps: tuple[str, ...] = (),
              links: dict[str, str] | None = None, **extra: Any) -> Path:
        entries = [manifest_entry(manifest(f"example.com/{name}", **extra, **(
            {"dependencies": [{"imageName": f"example.com/{d}"} for d in deps]} if deps
            else {}))), dir_entry("rootfs")]
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        entries += [dir_entry(f"rootfs/{d}") for d in dirs]
        entries += [file_entry(f"rootfs/{p}", data) for p, data in files.items()]
        entries += [link_entry(f"rootfs/{p}", t) for p, t in (links or {}).items()]
        return aci_from_entries(tmp_path / f"{name}.aci", entries)

    acis = [
        image("d", {"f/y": b"D", "f/z": b"D", "f/w": b"D"}),
        image("b", {"f/x": b"B", "f/y": b"B", "f/z": b"B"}, links={"etc2": "/f"}),
        image("c", {"f/z": b"C", "etc2/c": b"C"}, ("d",),
              pathWhitelist=["/f/y", "/f/z", "/etc2/c"]),
        image("a", {"f/a": b"A"}, ("b", "c")),
    ]
    ids = [store("import", str(aci)).stdout.split()[-1] for aci in acis]
    rootfs = store.root / "images" / ids[-1] / "rootfs"
    found = {p.name: p.read_bytes() for p in (rootfs / "f").iterdir()}
    assert found == {"x": b"B", "y": b"D", "z": b"C", "a": b"A"}  # no w: C's whitelist
    assert (store.root / "images" / ids[0] / "rootfs/f/w").exists()  # D itself keeps it
    assert not (rootfs / "etc2").is_symlink()
    assert (rootfs / "etc2/c").read_bytes() == b"C"
    assert not (rootfs / "f/c").exists()  # not written through B's symlink


def test_environment_of_the_app_and_its_handlers_is_exactly_the_spec_s(
    host: Host, tmp_path: Path
) -> None:
    """ace.md "Execution Environment": PATH, AC_APP_NAME, AC_METADATA_URL and container are set
    for the app's main process and its lifecycle processes; jetpack adds nothing else (only the
    image's own environment), and the supplementaryGIDs of a pod manifest's app apply."""
    _import_app(host, tmp_path, "example.com/envonly", "true", [])
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [{"name": "envonly", "image": {"name": "example.com/envonly"},
                  "app": {"exec": ["/usr/bin/env"], "user": "0", "group": "0",
                          "supplementaryGIDs": [5, 7],
                          "environment": [{"name": "FROM_IMAGE", "value": "yes"}],
                          "eventHandlers": [
                              {"name": "pre-start", "exec": ["/usr/bin/id", "-G"]},
                              {"name": "post-stop", "exec": ["/usr/bin/env"]}]}}]}))
    host.start()
    pod = host.jp("prepare", "-f", str(path)).stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["0", "5", "7"]  # gid 0, then the supplementary groups
    names = sorted(line.split("=", 1)[0] for line in lines[1:] if "=" in line)
    expected = ["AC_APP_NAME", "AC_METADATA_URL", "FROM_IMAGE", "PATH", "container"]
    assert names == sorted(expected * 2), out.stdout  # the app's and post-stop's, the same
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["AC_APP_NAME"] == "envonly"
    assert re.fullmatch(r"http://[0-9.]+:[0-9]+/[A-Za-z0-9_-]{22,}", env["AC_METADATA_URL"])
    assert env["container"] == "jetpack"
    host.jp("destroy", pod)


def test_a_pod_started_again_keeps_its_apps_rootfs(host: Host) -> None:
    """ace.md says every execution of an app MUST start from a clean copy of its rendered
    rootfs; jetpack's CLI contract (DESIGN.md "Pod states") instead keeps an exited pod's app
    rootfs when it is started again, as ``docker start`` does. This shows that deviation:
    docs/conformance.md lists it."""
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--exec",
                  "/bin/sh -c 'echo run >> /runs; wc -l < /runs'").stdout.split()[-1]
    assert host.jp("run", pod).stdout.split() == ["1"]
    assert host.jp("run", pod).stdout.split() == ["2"]
    host.jp("destroy", pod)


def test_host_volumes_recursive_by_default_and_symlinked_sources_refused(
    host: Host, tmp_path: Path
) -> None:
    """pods.md ``recursive``: unspecified, a host volume is mounted recursively (a mount below
    its source comes along); ``recursive=false`` leaves it out. ace.md: a source whose path
    goes through a symbolic link (the last component or an intermediate directory) is an
    error."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(source)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(source / "sub")],
                   check=True)
    try:
        (source / "sub" / "inner").write_text("below")
        host.start()
        script = "/bin/sh -c 'ls /v/sub | sed s/^/seen=/; echo done'"
        default = host.jp("run", "--rm", "example.com/busybox", "--exec", script, "-m", "v:/v",
                          "-v", f"v,kind=host,source={source}")
        assert "seen=inner" in default.stdout
        flat = host.jp("run", "--rm", "example.com/busybox", "--exec", script, "-m", "v:/v",
                       "-v", f"v,kind=host,source={source},recursive=false")
        assert "done" in flat.stdout
        assert "seen=" not in flat.stdout
        for bad in (tmp_path / "link", tmp_path / "link" / "sub"):
            out = host.jp("run", "--rm", "example.com/busybox", "--exec", script, "-m", "v:/v",
                          "-v", f"v,kind=host,source={bad}", check=False)
            assert out.returncode != 0
            assert "symbolic link" in out.stdout + out.stderr, out
    finally:
        subprocess.run(["umount", str(source / "sub")], check=True)


def test_pod_level_port_with_host_ip_and_pod_port(host: Host, tmp_path: Path) -> None:
    """pods.md ``ports``: a pod-level port whose ``podPort`` names a port no image declares is
    forwarded from ``hostPort``, on the ``hostIP`` given only (not on the host's other
    addresses)."""
    aci = aci_from_entries(tmp_path / "web.aci", [
        manifest_entry(manifest("example.com/web", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/usr/sbin/httpd", "-f", "-p", "8081", "-h", "/www"],
                "user": "0", "group": "0"})),
        dir_entry("rootfs"), dir_entry("rootfs/www"),
        file_entry("rootfs/www/index.html", b"pod port\n")])
    host.jp("import", str(aci))
    port = 20000 + secrets.randbelow(20000)
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [{"name": "web", "image": {"name": "example.com/web"}}],
        "ports": [{"name": "alt", "hostPort": port, "hostIP": "127.0.0.1",
                   "podPort": {"name": "alt", "protocol": "tcp", "port": 8081}}]}))
    host.start()
    pod = host.jp("prepare", "-f", str(path)).stdout.split()[-1]
    host.jp("start", pod)
    assert http_get(f"http://127.0.0.1:{port}/") == b"pod port\n"
    gateway = host.network.split("/")[0]  # another address of this host
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{gateway}:{port}/", timeout=3)
    host.jp("destroy", pod)


def test_isolators_jetpack_does_not_enforce_are_reported_never_dropped() -> None:
    """ace.md: an executor MAY ignore isolators but MUST make which were ignored available to
    the user: selinux-context (SELinux labelling is not supported), block-bandwidth under the
    Linux driver, network-bandwidth, each named in the plan's warnings."""
    from jetpack.stage1.isolators import plan_isolators

    plan = plan_isolators([
        {"name": "os/linux/selinux-context",
         "value": {"user": "system_u", "role": "system_r", "type": "dhcpc_t", "level": "s0"}},
        {"name": "resource/block-bandwidth", "value": {"default": True, "limit": "2M"}},
        {"name": "resource/network-bandwidth", "value": {"default": True, "limit": "1G"}},
    ], platform="linux")
    assert len(plan.warnings) == 3
    for name, warning in zip(("os/linux/selinux-context", "resource/block-bandwidth",
                              "resource/network-bandwidth"), plan.warnings, strict=True):
        assert name in warning
        assert warning.endswith("ignored")


def test_user_annotations_and_labels_must_be_strings() -> None:
    """pods.md: all values of ``userAnnotations`` MUST be strings (``userLabels`` too)."""
    from jetpack.appc import PodManifest
    from jetpack.errors import ValidationError

    base = {"acVersion": "0.8.11", "acKind": "PodManifest", "apps": []}
    parsed = PodManifest.from_json(json.dumps({**base, "userAnnotations": {"any key!": "v"},
                                               "userLabels": {"tier": "front"}}))
    assert parsed.user_annotations == {"any key!": "v"}
    for field in ("userAnnotations", "userLabels"):
        with pytest.raises(ValidationError, match=field):
            PodManifest.from_json(json.dumps({**base, field: {"count": 3}}))


def test_app_names_unique_and_port_ranges_not_forwarded(host: Host, tmp_path: Path) -> None:
    """pods.md: app names MUST be unique within a pod. aci.md ``count``: a port range is
    declared (and socket-activated, see above) but a pod-level ``hostPort`` is one port, so
    forwarding a range is refused, naming it; a single port of the same image forwards."""
    out = host.jp("prepare", "example.com/busybox", "example.com/busybox", check=False)
    assert out.returncode == 2
    assert "two apps are named 'busybox'" in out.stderr
    aci = aci_from_entries(tmp_path / "ranged.aci", [
        manifest_entry(manifest("example.com/ranged", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/true"], "user": "0", "group": "0",
                "ports": [{"name": "ftp-data", "protocol": "tcp", "port": 20000, "count": 10},
                          {"name": "ftp", "protocol": "tcp", "port": 21}]})),
        dir_entry("rootfs")])
    host.jp("import", str(aci))
    out = host.jp("prepare", "example.com/ranged", "-p", "ftp-data:30000", check=False)
    assert out.returncode == 2
    assert "a range of 10 ports cannot be forwarded" in out.stderr
    assert json.loads(host.jp("list", "--json").stdout) == []
    host.jp("prepare", "example.com/ranged", "-p", "ftp:30021")


def test_metadata_annotations_merge_with_the_pod_manifest_winning(
    host: Host, tmp_path: Path
) -> None:
    """pods.md ``apps.annotations``: merged with the image's annotations when queried through
    the metadata service, the pod manifest's values taking precedence; the pod's own
    ``annotations`` at ``pod/annotations``. Asked from inside the pod, as an app does."""
    aci = aci_from_entries(tmp_path / "annotated.aci", [
        manifest_entry(manifest("example.com/annotated", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/sh", "-c", "base=$AC_METADATA_URL/acMetadata/v1; "
                         "echo app=$(wget -q -O - $base/apps/$AC_APP_NAME/annotations); "
                         "echo pod=$(wget -q -O - $base/pod/annotations)"],
                "user": "0", "group": "0"},
            annotations=[{"name": "authors", "value": "image"},
                         {"name": "homepage", "value": "https://example.com"}])),
        dir_entry("rootfs")])
    host.jp("import", str(aci))
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "acVersion": "0.8.11", "acKind": "PodManifest",
        "apps": [{"name": "annotated", "image": {"name": "example.com/annotated"},
                  "annotations": [{"name": "authors", "value": "pod"},
                                  {"name": "team", "value": "blue"}]}],
        "annotations": [{"name": "ip-address", "value": "10.1.2.3"}]}))
    host.start()
    pod = host.jp("prepare", "-f", str(path)).stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    found = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    merged = {a["name"]: a["value"] for a in json.loads(found["app"])}
    assert merged == {"authors": "pod", "homepage": "https://example.com", "team": "blue"}
    assert json.loads(found["pod"]) == [{"name": "ip-address", "value": "10.1.2.3"}]
    host.jp("destroy", pod)


TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


def test_conformance_table_cites_existing_tests() -> None:
    """docs/conformance.md cannot rot: every row of its tables cites at least one test in its
    last column, and every test it cites is defined (a module-level test function)."""
    rows = [line for line in (REPO / "docs" / "conformance.md").read_text().splitlines()
            if line.startswith("|") and not line.startswith(("| §", "|---"))]
    assert len(rows) > 60
    missing = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        cited = TEST_ID.findall(cells[-1])
        assert cited, f"a row without a test: {row}"
        for file, name in cited:
            path = REPO / file
            if not path.is_file() or name not in _defined_tests(path):
                missing.append(f"{file}::{name}")
    assert missing == []
