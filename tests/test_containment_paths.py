"""Containment of paths (issue 15, items 4 and 7): every attack runs from a hostile image or from
inside a real pod, through the real import and start paths, and must not touch the host; the
legitimate use next to it must keep working."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acis import aci_from_entries, link_entry, manifest, manifest_entry
from conftest import REPO
from podhost import Host, busybox_image

BUSYBOX_APP = {"exec": ["/bin/sh"], "user": "0", "group": "0"}
ESCAPE = "../" * 24  # more ".." than any state root is deep: relative links reach the host's /


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    return victim


def _untouched(victim: Path) -> None:
    assert list(victim.iterdir()) == [], "the pod wrote into a host directory"
    st = victim.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 0, 0)
    assert st.st_mtime == 1_000_000_000


def _hostile_image(host: Host, tmp_path: Path, busybox_rootfs: Path, name: str,
                   links: dict[str, str]) -> str:
    """The busybox image with each ``links`` path replaced by a symlink; what it pointed at
    copied (for an absolute link) to where the link leads inside the rootfs."""
    rootfs = tmp_path / f"image-{name}" / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    for path, target in links.items():
        link = rootfs / path.lstrip("/")
        inside = rootfs / os.path.normpath("/" + target.replace(ESCAPE, "")).lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if link.is_dir():
            shutil.move(link, inside)
        else:
            inside.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    image = f"example.com/{name}"
    host.jp("import", str(busybox_image(tmp_path, rootfs, image, BUSYBOX_APP)))
    return image


# --- item 4: the supervisor's writes into a rootfs --------------------------------------------


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_attack_image_etc_symlink_gets_hosts_written_on_the_host(
        host: Host, tmp_path: Path, busybox_rootfs: Path, relative: bool) -> None:
    victim = _victim(tmp_path)
    target = (ESCAPE + str(victim).lstrip("/")) if relative else str(victim)
    image = _hostile_image(host, tmp_path, busybox_rootfs, "etclink", {"/etc": target})
    host.start()
    out = host.jp("run", "--rm", image, "--exec",
                  "/bin/sh -c 'cat /etc/hosts /etc/resolv.conf; id -un'")
    _untouched(victim)
    # the pod still gets its files: /etc leads to the rootfs's own copy of the victim path
    assert "localhost" in out.stdout
    assert "nameserver" in out.stdout
    assert out.stdout.split()[-1] == "root"  # the image's /etc/passwd, read through the link


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_attack_image_mount_point_symlink_mounts_over_a_host_path(
        host: Host, tmp_path: Path, busybox_rootfs: Path, relative: bool) -> None:
    victim = _victim(tmp_path)
    source = tmp_path / "volume"
    source.mkdir()
    target = (ESCAPE + str(victim).lstrip("/")) if relative else str(victim)
    image = _hostile_image(host, tmp_path, busybox_rootfs, "datalink", {"/data": target})
    host.start()
    out = host.jp("run", "--rm", image, "-m", "data:/data", "--exec",
                  "/bin/sh -c 'echo from-pod > /data/written; grep -c \" /data \" "
                  "/proc/self/mountinfo; ls /data'",
                  "-v", f"data,kind=host,source={source}", check=False)
    _untouched(victim)
    assert out.returncode == 0, out.stderr
    assert (source / "written").read_text() == "from-pod\n"  # the volume, inside the rootfs


def test_attack_host_volume_source_swapped_for_a_symlink_before_a_restart(
        host: Host, tmp_path: Path) -> None:
    """The app writes a symlink where another of its volumes' source is (a subdirectory of
    a writable volume) and fails; its restart must not bind what the symlink names."""
    victim = _victim(tmp_path)
    outer = tmp_path / "outer"
    (outer / "sub").mkdir(parents=True)
    script = ("if [ -e /outer/swapped ]; then echo second-run; echo pwned > /inner/pwned; "
              "exit 0; fi; echo first > /inner/legit; rm -rf /outer/sub; "
              f"ln -s {victim} /outer/sub; touch /outer/swapped; exit 1")
    host.start()
    out = host.jp("run", "--rm", "example.com/busybox", "-m", "outer:/outer", "-m",
                  "inner:/inner", "--exec", f"/bin/sh -c '{script}'", "--restart",
                  "on-failure:1", "-v", f"outer,kind=host,source={outer}",
                  "-v", f"inner,kind=host,source={outer / 'sub'}", check=False)
    _untouched(victim)
    assert "second-run" not in out.stdout
    assert "symbolic link" in out.stderr + out.stdout + host.log.read_text()
    (outer / "sub").unlink()


def test_attack_nested_empty_volume_mount_point_swapped_for_a_symlink(
        host: Host, tmp_path: Path) -> None:
    """One app replaces, in a shared empty volume, the directory where the other app mounts a
    second empty volume by a symlink to a host directory; the pod restarts (its volumes are
    prepared again, uid/gid/mode applied, the mounts made again)."""
    victim = _victim(tmp_path)
    host.start()
    pod = host.jp(
        "prepare", "--name", "nested",
        "example.com/busybox", "--app-name", "victim", "-m", "outer:/o", "-m", "inner:/o/i",
        "--exec", "/bin/sh -c 'echo ok > /o/i/file; ls -ld /o/i; sleep 300'",
        "example.com/busybox", "--app-name", "planter", "-m", "outer:/o",
        "--exec", "/bin/sh -c 'while [ ! -d /o/i ]; do sleep 0.1; done; rm -rf /o/i; "
                  f"ln -s {victim} /o/i; sleep 300'",
        "-v", "outer,kind=empty", "-v", "inner,kind=empty,mode=0777,uid=1234,gid=1234",
    ).stdout.split()[-1]
    host.jp("start", pod)
    volumes = host.jp.root / "pods" / pod / "volumes"
    host.wait_for("the planted link", (volumes / "outer" / "i").is_symlink)
    host.jp("restart", pod)
    host.wait_for("the restarted app", lambda: host.jp("logs", "nested:victim").stdout
                  .count("/o/i") >= 2)
    _untouched(victim)
    assert (volumes / "inner" / "file").read_text() == "ok\n"
    st = (volumes / "inner").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o777, 1234, 1234)
    host.jp("stop", pod)


def test_attack_layer_symlink_to_a_host_directory_gets_its_times_set(
        host: Host, tmp_path: Path) -> None:
    """Rendering a layer over its dependency: a symlink to a host directory in the layer is
    listed with the directories, whose times are set last."""
    for name in ("abs", "rel"):
        (tmp_path / name).mkdir()
    victims = [_victim(tmp_path / name) for name in ("abs", "rel")]
    layer = manifest("example.com/layered", app=BUSYBOX_APP,
                     dependencies=[{"imageName": "example.com/busybox"}])
    aci = aci_from_entries(tmp_path / "layered.aci", [
        manifest_entry(layer),
        link_entry("rootfs/abs", str(victims[0])),
        link_entry("rootfs/rel", ESCAPE + str(victims[1]).lstrip("/")),
    ])
    host.jp("import", str(aci))
    for victim in victims:
        _untouched(victim)
    host.start()
    out = host.jp("run", "--rm", "example.com/layered", "--exec",
                  "/bin/sh -c 'readlink /abs; readlink /rel; ls /bin/sh'")
    assert out.stdout.split() == [str(victims[0]), ESCAPE + str(victims[1]).lstrip("/"),
                                  "/bin/sh"]


# --- item 7: read-only volumes ----------------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _mountinfo_options(text: str, point: str) -> set[str]:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4] == point:
            return set(fields[5].split(","))
    raise AssertionError(f"{point} is not a mount point in the pod:\n{text}")


def test_attack_read_only_volume_writable_through_its_submount_and_suid(
        host: Host, tmp_path: Path) -> None:
    """A recursive read-only host volume whose source is a nosuid,noexec tmpfs with another
    tmpfs mounted below: the pod writes into neither, and neither becomes suid or exec."""
    source = tmp_path / "ro-source"
    source.mkdir()
    _mount("-t", "tmpfs", "-o", "nosuid,noexec,size=1m", "tmpfs", str(source))
    try:
        (source / "sub").mkdir()
        (source / "top-file").write_text("top\n")
        _mount("-t", "tmpfs", "-o", "nosuid,size=1m", "tmpfs", str(source / "sub"))
        try:
            (source / "sub" / "sub-file").write_text("sub\n")
            host.start()
            script = ("cat /v/top-file /v/sub/sub-file; "
                      "touch /v/x 2>/dev/null && echo top-writable; "
                      "touch /v/sub/x 2>/dev/null && echo sub-writable; "
                      "cat /proc/self/mountinfo")
            out = host.jp("run", "--rm", "example.com/busybox", "-m", "v:/v", "--exec",
                          f"/bin/sh -c '{script}'",
                          "-v", f"v,kind=host,source={source},readOnly=true")
            assert out.stdout.startswith("top\nsub\n")  # reading still works
            assert "writable" not in out.stdout
            assert sorted(source.iterdir()) == [source / "sub", source / "top-file"]
            assert sorted((source / "sub").iterdir()) == [source / "sub" / "sub-file"]
            top = _mountinfo_options(out.stdout, "/v")
            sub = _mountinfo_options(out.stdout, "/v/sub")
            assert {"ro", "nosuid", "noexec", "nodev"} <= top
            assert {"ro", "nosuid", "nodev"} <= sub
        finally:
            subprocess.run(["umount", str(source / "sub")], check=True)
    finally:
        subprocess.run(["umount", str(source)], check=True)


def test_writable_volume_stays_writable_and_gets_nodev(host: Host, tmp_path: Path) -> None:
    source = tmp_path / "rw-source"
    source.mkdir()
    host.start()
    out = host.jp("run", "--rm", "example.com/busybox", "-m", "v:/v", "--exec",
                  "/bin/sh -c 'echo hi > /v/x; cat /proc/self/mountinfo'",
                  "-v", f"v,kind=host,source={source}")
    assert (source / "x").read_text() == "hi\n"
    options = _mountinfo_options(out.stdout, "/v")
    assert "rw" in options
    assert "nodev" in options


_FALLBACK = """
import errno, sys
from pathlib import Path
from jetpack.stage1 import linux_init, linux_sys

def no_mount_api(*args, **kwargs):
    raise OSError(errno.ENOSYS, "open_tree")

linux_sys.open_tree = no_mount_api  # a kernel before 5.2: the remount walk
tmp = Path(sys.argv[1])
linux_sys.mount(None, "/", None, linux_sys.MS_REC | linux_sys.MS_PRIVATE)
linux_sys.mount("tmpfs", str(tmp / "source"), "tmpfs", linux_sys.MS_NOSUID | linux_sys.MS_NOEXEC)
(tmp / "source/sub").mkdir()
linux_sys.mount("tmpfs", str(tmp / "source/sub"), "tmpfs", linux_sys.MS_NOSUID)
linux_init._mount_volume(tmp / "rootfs", {
    "volume": "v", "kind": "host", "source": str(tmp / "source"), "target": "/v",
    "read_only": True, "recursive": True})
print(open("/proc/self/mountinfo").read())
"""


def test_read_only_volume_without_mount_setattr_covers_submounts_and_keeps_nosuid(
        root: None, tmp_path: Path) -> None:
    """Kernels without the new mount API: the bind is remounted mount by mount, each with
    the flags it had (a remount replaces them all) plus ro and nodev. Everything happens in
    a private mount namespace that dies with the process."""
    (tmp_path / "source").mkdir()
    (tmp_path / "rootfs").mkdir()
    out = subprocess.run(["unshare", "--mount", sys.executable, "-c", _FALLBACK,
                          str(tmp_path)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60).stdout
    top = _mountinfo_options(out, str(tmp_path / "rootfs/v"))
    sub = _mountinfo_options(out, str(tmp_path / "rootfs/v/sub"))
    assert {"ro", "nosuid", "noexec", "nodev"} <= top
    assert {"ro", "nosuid", "nodev"} <= sub
    assert "noexec" not in sub
