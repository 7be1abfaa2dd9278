"""``jetpack build`` for real: a busybox base made with ``--from-dir`` from the images/busybox
scripts, a child built in a sandbox that adds and deletes files, exported, validated without
jetpack (tarfile + the appc schema, GNU tar), destroyed and re-imported to the same ID and tree;
failed builds leave nothing behind; the FreeBSD base script parses."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from jetpack.appc import ImageManifest
from jetpack.hostinfo import appc_arch, appc_os

from acis import sha512_of_tar
from conftest import REPO, Jetpack, write_conf

IMAGES = REPO / "images"


def snapshot(rootfs: Path) -> dict[str, tuple[object, ...]]:
    """Every path with its type, mode, owner and content (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            full = Path(top) / name
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(full.read_bytes()).hexdigest()
            else:
                what = None
            out[str(full.relative_to(rootfs))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def state_listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not p.name.startswith("jetpack.db")}


def mounts(under: Path) -> list[str]:
    """Mounts under ``under`` (other tests on this machine mount and unmount elsewhere)."""
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(under) in line]


def make_base(jp: Jetpack, tmp_path: Path, busybox: Path) -> str:
    """The busybox base image, the in-jetpack way: images/busybox's scripts + build --from-dir."""
    work = tmp_path / "base"
    (work / "rootfs").mkdir(parents=True)
    subprocess.run(["sh", str(IMAGES / "busybox/rootfs.sh"), str(busybox), str(work / "rootfs")],
                   check=True)
    subprocess.run(["sh", str(IMAGES / "manifest.sh"), str(IMAGES / "busybox/manifest.in"),
                    str(work / "manifest.json")], check=True)
    out = jp("build", "--from-dir", str(work / "rootfs"), str(work / "manifest.json"))
    image_id = out.stdout.splitlines()[-1]
    tree = jp.root / "images" / image_id
    assert snapshot(tree / "rootfs") == snapshot(work / "rootfs")
    return image_id


def build_dir(tmp_path: Path, script: str, template: object | None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "build.sh").write_text(script)
    (ctx / "payload.txt").write_text("payload from the build directory\n")
    if template is not None:
        (ctx / "template.json").write_text(json.dumps(template))
    return ctx


CHILD = {"name": "example.com/child", "labels": [{"name": "version", "value": "0.1"}],
         "app": {"exec": ["/bin/cat", "/etc/hello"], "user": "0", "group": "0"},
         "annotations": [{"name": "description", "value": "a built child"}]}

CHILD_SCRIPT = """set -e
test "$(pwd)" = /jetpack-build
test "$(id -u)" = 0
cp payload.txt /etc/hello
rm /etc/group
mkdir -p /srv/empty
cp template.json manifest.json
echo build ran
"""


def validate_aci(aci: Path) -> ImageManifest:
    """Structure checked without jetpack's importer: Python's tarfile, the appc schema, and GNU
    tar's own listing (no actool here)."""
    listed = subprocess.run(["tar", "-tzf", str(aci)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed[0] == "manifest"
    assert all(n == "manifest" or n == "rootfs/" or n.startswith("rootfs/") for n in listed)
    with tarfile.open(aci, "r:gz") as tar:
        names = tar.getnames()
        assert names.count("manifest") == 1
        assert len(set(names)) == len(names)
        for member in tar.getmembers():
            assert not member.name.startswith("/")
            assert ".." not in Path(member.name).parts
            if member.issym() or member.islnk():
                assert member.name.startswith("rootfs/")
        data = tar.extractfile("manifest")
        assert data is not None
        return ImageManifest.from_json(data.read())


def build_export_reimport(jp: Jetpack, tmp_path: Path, busybox: Path, *,
                          destroy: bool = True) -> None:
    """``destroy``: destroy the image and re-import its export in the same store; otherwise
    import the exports into a second, fresh store (zfs-fuse cannot destroy images: its zfs
    lacks the ``clones`` property that ZfsStorage.destroy_image asks for)."""
    jp("init")
    base_id = make_base(jp, tmp_path, busybox)
    ctx = build_dir(tmp_path, CHILD_SCRIPT, CHILD)
    out = jp("build", "jetpack.example/busybox", str(ctx), "sh", "build.sh")
    child_id = out.stdout.splitlines()[-1]
    assert "build ran" in out.stdout  # the build's output goes to the terminal
    # the rendered tree: the parent, plus the file, minus the deleted one, no build directory
    rootfs = jp.root / "images" / child_id / "rootfs"
    parent = snapshot(jp.root / "images" / base_id / "rootfs")
    tree = snapshot(rootfs)
    assert (rootfs / "etc/hello").read_text() == "payload from the build directory\n"
    assert set(tree) == (set(parent) - {"etc/group"}) | {"etc/hello", "srv", "srv/empty"}
    assert not (rootfs / "jetpack-build").exists()
    # the manifest: the template's name/labels/app, os/arch, created, the parent as dependency
    record = json.loads(jp("show-image", child_id).stdout)
    manifest = ImageManifest.parse(record["manifest"])
    assert manifest.name == "example.com/child"
    assert manifest.labels == {"version": "0.1", "os": appc_os(), "arch": appc_arch()}
    assert manifest.annotations["description"] == "a built child"
    assert manifest.annotations["created"].endswith("Z")
    (dep,) = manifest.dependencies
    assert (dep.image_name, dep.image_id) == ("jetpack.example/busybox", base_id)
    assert dep.labels["version"] == "1.0.0"
    assert "/etc/group" not in manifest.path_whitelist
    assert {"/etc/hello", "/etc/passwd", "/srv/empty", "/bin/busybox"} <= set(
        manifest.path_whitelist)
    # the built image runs: a build from it sees its tree
    (tmp_path / "check").mkdir()
    check = build_dir(tmp_path / "check", "test -f /etc/hello && test ! -e /etc/group && "
                      "cat /etc/hello && echo '{\"name\": \"example.com/check\"}' > manifest.json",
                      None)
    ran = jp("build", "example.com/child", str(check), "sh", "build.sh")
    assert "payload from the build directory" in ran.stdout
    if destroy:
        jp("destroy-image", "example.com/check")
    # a pod prepared from it gets a clone of the rendered tree
    pod = jp("prepare", "example.com/child").stdout.splitlines()[-1]
    app_dir = jp.root / "pods" / pod / "apps" / "child"
    if (app_dir / "image").exists():  # dir storage with overlayfs: the image is the lower layer
        assert (app_dir / "image").read_text().strip() == child_id
    else:  # zfs clone or copy: the tree itself
        assert snapshot(app_dir / "rootfs") == tree
    jp("destroy", pod)
    # export: the layer ACI, byte-identical to what was imported, valid without jetpack
    aci = tmp_path / "child.aci"
    jp("export", child_id, str(aci))
    assert sha512_of_tar(aci) == child_id
    exported = validate_aci(aci)
    assert exported.dependencies == manifest.dependencies
    with tarfile.open(aci, "r:gz") as tar:
        layer = {n for n in tar.getnames() if n.startswith("rootfs/")}
    assert "rootfs/etc/hello" in layer
    assert "rootfs/bin/busybox" not in layer
    flat = tmp_path / "flat.aci"
    jp("export", "--flat", child_id, str(flat))
    flat_manifest = validate_aci(flat)
    assert flat_manifest.dependencies == ()
    assert flat_manifest.path_whitelist == ()
    with tarfile.open(flat, "r:gz") as tar:
        assert "rootfs/bin/busybox" in tar.getnames()
        assert "rootfs/etc/group" not in tar.getnames()
    if destroy:
        # destroyed and re-imported: the same ID and the same rendered tree
        jp("destroy-image", child_id)
        assert not (jp.root / "images" / child_id).exists()
        target = jp
    else:
        # imported elsewhere: a fresh store with the parent exported from this one
        target = Jetpack(write_conf(tmp_path / "elsewhere.conf", **{
            "root.path": str(tmp_path / "elsewhere"), "storage.driver": "dir"}),
            tmp_path / "elsewhere")
        target("init")
        jp("export", base_id, str(tmp_path / "base.aci"))
        assert target("import", str(tmp_path / "base.aci")).stdout.split()[-1] == base_id
    again = target("import", str(aci)).stdout.splitlines()[-1]
    assert again == child_id
    assert snapshot(target.root / "images" / child_id / "rootfs") == tree


def test_build_export_reimport_dir(root: None, busybox: Path, jetpack_dir: Jetpack,
                                   tmp_path: Path) -> None:
    build_export_reimport(jetpack_dir, tmp_path, busybox)


def test_build_export_reimport_zfs(root: None, busybox: Path, jetpack_zfs: Jetpack,
                                   tmp_path: Path) -> None:
    build_export_reimport(jetpack_zfs, tmp_path, busybox, destroy=False)


@pytest.mark.parametrize("case", ["exit", "no-template", "bad-template", "template-deps",
                                  "signal"])
def test_failed_build_leaves_nothing(root: None, busybox: Path, jetpack_dir: Jetpack,
                                     tmp_path: Path, case: str) -> None:
    jp = jetpack_dir
    jp("init")
    make_base(jp, tmp_path, busybox)
    script, template, message = {
        "exit": ("echo failing; cp template.json manifest.json; exit 3", CHILD,
                 "exited with status 3"),
        "no-template": ("echo no manifest", CHILD, "left no manifest.json"),
        "bad-template": ("cp template.json manifest.json", {"name": "Not A Name!"},
                         "bad manifest template"),
        "template-deps": ("cp template.json manifest.json",
                          {**CHILD, "dependencies": [{"imageName": "example.com/other"}]},
                          "a build fills it in"),
        "signal": ("cp template.json manifest.json; kill -9 $$", CHILD, "signal 9"),
    }[case]
    ctx = build_dir(tmp_path, script, template)
    before, mounts_before = state_listing(jp.root), mounts(tmp_path)
    images_before = jp("images", "-q").stdout
    proc = jp("build", "jetpack.example/busybox", str(ctx), "sh", "build.sh", check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert state_listing(jp.root) == before
    assert mounts(tmp_path) == mounts_before
    assert jp("images", "-q").stdout == images_before


def test_build_usage_errors(root: None, jetpack_dir: Jetpack, tmp_path: Path) -> None:
    jetpack_dir("init")
    proc = jetpack_dir("build", "busybox", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "a command are needed" in proc.stderr
    proc = jetpack_dir("build", "--from-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "one manifest template" in proc.stderr
    proc = jetpack_dir("build", "no.such/image", str(tmp_path), "true", check=False)
    assert proc.returncode != 0
    assert "no image named no.such/image" in proc.stderr


def test_freebsd_base_script_parses() -> None:
    script = IMAGES / "freebsd-base" / "build.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    manifest_in = (IMAGES / "freebsd-base" / "manifest.in").read_text()
    filled = manifest_in.replace("@OS@", "freebsd").replace("@ARCH@", "amd64").replace(
        "@VERSION@", "14.1")
    assert ImageManifest.from_json(filled).name == "jetpack.example/freebsd-base"


@pytest.mark.parametrize("link", ["manifest.json", "directory"])
def test_attack_build_template_symlink_reads_a_host_file(root: None, busybox: Path,
                                                         jetpack_dir: Jetpack, tmp_path: Path,
                                                         link: str) -> None:
    """The build command (pod root) points its manifest template, or the whole build
    directory, at a host file that is a valid template: the host's data must not become the
    image's manifest."""
    jp = jetpack_dir
    jp("init")
    make_base(jp, tmp_path, busybox)
    host_dir = tmp_path / "host-secrets"
    host_dir.mkdir()
    (host_dir / "manifest.json").write_text(json.dumps({**CHILD, "name": "example.com/leaked"}))
    script = (f"ln -s {host_dir}/manifest.json manifest.json" if link == "manifest.json" else
              f"cd / && rm -rf /jetpack-build && ln -s {host_dir} /jetpack-build")
    ctx = build_dir(tmp_path, script, CHILD)
    proc = jp("build", "jetpack.example/busybox", str(ctx), "sh", "build.sh", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is a symlink" in proc.stderr
    assert "example.com/leaked" not in jp("images").stdout
