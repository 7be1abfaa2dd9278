"""The image store through the CLI, for real: tar+gzip ACIs from a busybox rootfs, both storage
drivers (zfs on a zfs-fuse pool), hostile archives refused without a trace, dependencies,
export, references and tags, and an import killed half-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetpack.hostinfo import appc_arch, appc_os

from acis import (
    aci_from_dir,
    aci_from_entries,
    dir_entry,
    file_entry,
    link_entry,
    manifest,
    manifest_entry,
    sha512_of_tar,
)
from conftest import REPO, Jetpack


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not p.name.startswith("jetpack.db")}


def images_json(jp: Jetpack) -> list[dict[str, object]]:
    return json.loads(jp("images", "--json").stdout)


@pytest.fixture
def busybox_aci(tmp_path: Path, busybox_rootfs: Path) -> Path:
    return aci_from_dir(tmp_path, busybox_rootfs, manifest("example.com/busybox", app={
        "exec": ["/bin/sh"], "user": "0", "group": "0"}), tmp_path / "busybox.aci")


@pytest.mark.parametrize("compress", ["gzip", "bzip2", "xz", "none"])
def test_import_busybox_dir(root: None, jetpack_dir: Jetpack, tmp_path: Path,
                            busybox_rootfs: Path, compress: str) -> None:
    aci = aci_from_dir(tmp_path, busybox_rootfs, manifest("example.com/busybox"),
                       tmp_path / f"bb-{compress}.aci", compress)
    jetpack_dir("init")
    out = jetpack_dir("import", str(aci))
    image_id = out.stdout.splitlines()[-1]
    assert image_id == sha512_of_tar(aci)
    (image,) = images_json(jetpack_dir)
    assert image["id"] == image_id
    assert image["name"] == "example.com/busybox"
    assert image["labels"] == {"version": "1.0.0", "os": appc_os(), "arch": appc_arch()}
    tree = jetpack_dir.root / "images" / image_id
    assert (tree / "rootfs" / "bin" / "busybox").stat().st_mode & 0o111
    assert (tree / "rootfs" / "bin" / "sh").is_symlink()
    assert (tree / "rootfs" / "tmp").stat().st_mode & 0o7777 == 0o1777
    # the same ACI again: the same ID, nothing new
    again = jetpack_dir("import", str(aci))
    assert again.stdout.splitlines()[-1] == image_id
    events = jetpack_dir("events", "--no-follow", "--json").stdout.splitlines()
    assert [json.loads(e)["type"] for e in events] == ["image.imported"]


def test_import_from_stdin(root: None, jetpack_dir: Jetpack, busybox_aci: Path) -> None:
    jetpack_dir("init")
    with busybox_aci.open("rb") as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "jetpack.cli.main", "-c", str(jetpack_dir.conf), "import",
             "-"], stdin=stdin, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == sha512_of_tar(busybox_aci)


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True).stdout


def test_import_zfs(jetpack_zfs: Jetpack, zfs_dataset: str, busybox_aci: Path) -> None:
    jetpack_zfs("init")
    image_id = jetpack_zfs("import", str(busybox_aci)).stdout.splitlines()[-1]
    assert image_id == sha512_of_tar(busybox_aci)
    dataset = f"{zfs_dataset}/images/{image_id}"
    names = zfs("list", "-H", "-t", "all", "-o", "name", "-r", f"{zfs_dataset}/images").split()
    assert dataset in names
    assert f"{dataset}@seal" in names
    assert zfs("get", "-H", "-o", "value", "readonly", dataset).strip() == "on"
    assert (jetpack_zfs.root / "images" / image_id / "rootfs" / "bin" / "busybox").exists()
    assert not [n for n in names if "/tmp-" in n]


HOSTILE = {
    "dotdot": ([dir_entry("rootfs"), file_entry("rootfs/../../evil")], "climbs out"),
    "absolute": ([dir_entry("rootfs"), file_entry("/etc/evil")], "absolute"),
    "outside": ([dir_entry("rootfs"), file_entry("other/file")], "outside manifest"),
    "symlink-write": ([dir_entry("rootfs"), link_entry("rootfs/link", "/tmp"),
                       file_entry("rootfs/link/evil")], "through the symlink"),
    "symlink-dotdot": ([dir_entry("rootfs"), link_entry("rootfs/up", "../.."),
                        file_entry("rootfs/up/evil")], "through the symlink"),
    "hardlink-out": ([dir_entry("rootfs"), link_entry("rootfs/h", "/etc/passwd", hard=True)],
                     "hard link"),
    "hardlink-dotdot": ([dir_entry("rootfs"), link_entry("rootfs/h", "../../x", hard=True)],
                        "hard link"),
    "duplicate": ([dir_entry("rootfs"), file_entry("rootfs/a"), file_entry("rootfs/a")],
                  "appears twice"),
    "no-manifest": ([dir_entry("rootfs"), file_entry("rootfs/a")], "no manifest"),
    "big-manifest": ([file_entry("manifest", b" " * (2 << 20)), dir_entry("rootfs")],
                     "'manifest' is 2097152 bytes"),
    "bad-manifest": ([file_entry("manifest", b"{not json"), dir_entry("rootfs")],
                     "archive entry 'manifest' is not a valid image manifest"),
    "no-rootfs": ([], "no rootfs"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_refused_without_a_trace(
    root: None, jetpack_dir: Jetpack, tmp_path: Path, case: str
) -> None:
    entries, message = HOSTILE[case]
    if case not in ("no-manifest", "big-manifest", "bad-manifest"):
        entries = [manifest_entry(manifest("example.com/evil")), *entries]
    aci = aci_from_entries(tmp_path / f"{case}.aci", entries)
    jetpack_dir("init")
    before = listing(jetpack_dir.root)
    out = jetpack_dir("import", str(aci), check=False)
    assert out.returncode == 1, out.stdout
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert images_json(jetpack_dir) == []
    assert listing(jetpack_dir.root) == before
    assert not Path("/tmp/evil").exists()
    assert not Path("/etc/evil").exists()


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_and_corrupt_streams(root: None, jetpack_dir: Jetpack, tmp_path: Path,
                                       busybox_aci: Path, cut: float) -> None:
    data = busybox_aci.read_bytes()
    truncated = tmp_path / "truncated.aci"
    truncated.write_bytes(data[: int(len(data) * cut)])
    corrupt = tmp_path / "corrupt.aci"
    corrupt.write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1200]) + data[1200:])
    jetpack_dir("init")
    before = listing(jetpack_dir.root)
    for aci in (truncated, corrupt):
        out = jetpack_dir("import", str(aci), check=False)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert any(w in out.stderr for w in ("truncated", "corrupt", "not a valid tar"))
        assert listing(jetpack_dir.root) == before
    assert images_json(jetpack_dir) == []


def test_hostile_on_zfs_leaves_no_dataset(jetpack_zfs: Jetpack, zfs_dataset: str,
                                          tmp_path: Path) -> None:
    jetpack_zfs("init")
    before = zfs("list", "-H", "-t", "all", "-o", "name", "-r", zfs_dataset)
    aci = aci_from_entries(tmp_path / "evil.aci", [
        manifest_entry(manifest("example.com/evil")), dir_entry("rootfs"),
        link_entry("rootfs/l", "/"), file_entry("rootfs/l/evil")])
    out = jetpack_zfs("import", str(aci), check=False)
    assert out.returncode == 1
    assert "rootfs/l/evil" in out.stderr
    assert zfs("list", "-H", "-t", "all", "-o", "name", "-r", zfs_dataset) == before


def layered(tmp_path: Path) -> tuple[Path, Path, Path]:
    """base (two files, a dir), mid (overrides one, adds one), top depending on both with a
    whitelist."""
    base = aci_from_entries(tmp_path / "base.aci", [
        manifest_entry(manifest("example.com/base")), dir_entry("rootfs"),
        dir_entry("rootfs/etc"), file_entry("rootfs/etc/a", b"base-a"),
        file_entry("rootfs/etc/b", b"base-b"), file_entry("rootfs/gone", b"x")])
    mid = aci_from_entries(tmp_path / "mid.aci", [
        manifest_entry(manifest("example.com/mid")), dir_entry("rootfs"),
        dir_entry("rootfs/etc"), file_entry("rootfs/etc/b", b"mid-b"),
        file_entry("rootfs/etc/c", b"mid-c")])
    top = aci_from_entries(tmp_path / "top.aci", [
        manifest_entry(manifest("example.com/top", dependencies=[
            {"imageName": "example.com/base", "labels": [{"name": "version", "value": "1.0.0"}]},
            {"imageName": "example.com/mid"}],
            pathWhitelist=["/etc/a", "/etc/b", "/etc/c", "/etc/d"])),
        dir_entry("rootfs"), dir_entry("rootfs/etc"), file_entry("rootfs/etc/d", b"top-d")])
    return base, mid, top


def check_rendered(rootfs: Path) -> None:
    assert (rootfs / "etc/a").read_bytes() == b"base-a"
    assert (rootfs / "etc/b").read_bytes() == b"mid-b"
    assert (rootfs / "etc/c").read_bytes() == b"mid-c"
    assert (rootfs / "etc/d").read_bytes() == b"top-d"
    assert not (rootfs / "gone").exists()  # not in the whitelist


def test_dependencies_rendered_dir(root: None, jetpack_dir: Jetpack, tmp_path: Path) -> None:
    base, mid, top = layered(tmp_path)
    jetpack_dir("init")
    for aci in (base, mid):
        jetpack_dir("import", str(aci))
    top_id = jetpack_dir("import", str(top)).stdout.split()[-1]
    check_rendered(jetpack_dir.root / "images" / top_id / "rootfs")


def test_dependencies_rendered_zfs_as_clone(jetpack_zfs: Jetpack, zfs_dataset: str,
                                           tmp_path: Path) -> None:
    base, mid, top = layered(tmp_path)
    jetpack_zfs("init")
    base_id = jetpack_zfs("import", str(base)).stdout.split()[-1]
    mid_id = jetpack_zfs("import", str(mid)).stdout.split()[-1]
    top_id = jetpack_zfs("import", str(top)).stdout.split()[-1]
    check_rendered(jetpack_zfs.root / "images" / top_id / "rootfs")
    origin = zfs("get", "-H", "-o", "value", "origin", f"{zfs_dataset}/images/{top_id}").strip()
    assert origin == f"{zfs_dataset}/images/{base_id}@seal"
    # the base cannot go while the rendered image is its clone, not even with --force
    out = jetpack_zfs("destroy-image", base_id, "--force", check=False)
    assert out.returncode == 1
    assert "is the base of image example.com/top" in out.stderr
    # once the rendered image is gone, both datasets can go
    jetpack_zfs("destroy-image", top_id)
    jetpack_zfs("destroy-image", base_id)
    left = zfs("list", "-H", "-t", "all", "-o", "name", "-r", f"{zfs_dataset}/images").split()
    mid_ds = f"{zfs_dataset}/images/{mid_id}"
    assert [n for n in left if "sha512-" in n] == [mid_ds, f"{mid_ds}@seal"]


def test_missing_dependency_is_refused(root: None, jetpack_dir: Jetpack, tmp_path: Path) -> None:
    _, _, top = layered(tmp_path)
    jetpack_dir("init")
    before = listing(jetpack_dir.root)
    out = jetpack_dir("import", str(top), check=False)
    assert out.returncode == 1
    assert "example.com/base" in out.stderr
    assert listing(jetpack_dir.root) == before


def test_export_identical_and_flat(root: None, jetpack_dir: Jetpack, tmp_path: Path) -> None:
    base, mid, top = layered(tmp_path)
    jetpack_dir("init")
    for aci in (base, mid):
        jetpack_dir("import", str(aci))
    top_id = jetpack_dir("import", str(top)).stdout.split()[-1]
    jetpack_dir("export", top_id, str(tmp_path / "out.aci"))
    assert (tmp_path / "out.aci").read_bytes() == top.read_bytes()
    jetpack_dir("export", "example.com/top", str(tmp_path / "flat.aci"), "--flat")
    flat_id = sha512_of_tar(tmp_path / "flat.aci")
    # the flat ACI imports on its own (no dependencies) as the expected ID, rendered the same
    other = Jetpack(tmp_path / "other.conf", tmp_path / "other")
    (tmp_path / "other.conf").write_text(f"root.path = {tmp_path / 'other'}\n")
    other("init")
    assert other("import", str(tmp_path / "flat.aci")).stdout.split()[-1] == flat_id
    check_rendered(tmp_path / "other" / "images" / flat_id / "rootfs")


def test_references_and_tags(root: None, jetpack_dir: Jetpack, tmp_path: Path) -> None:
    jetpack_dir("init")
    ids = {}
    for version in ("1.0.0", "2.0.0"):
        aci = aci_from_entries(tmp_path / f"v{version}.aci", [
            manifest_entry(manifest("example.com/app", version)), dir_entry("rootfs"),
            file_entry("rootfs/v", version.encode())])
        ids[version] = jetpack_dir("import", str(aci)).stdout.split()[-1]
        time.sleep(0.01)
    show = lambda ref: json.loads(jetpack_dir("show-image", ref).stdout)["id"]  # noqa: E731
    assert show("example.com/app") == ids["2.0.0"]  # most recently imported
    assert show("example.com/app:1.0.0") == ids["1.0.0"]
    assert show("example.com/app,version=1.0.0") == ids["1.0.0"]
    assert show(ids["1.0.0"][:15]) == ids["1.0.0"]
    jetpack_dir("tag", ids["1.0.0"], "example.com/app@stable")
    assert show("example.com/app@stable") == ids["1.0.0"]
    jetpack_dir("tag", ids["2.0.0"], "example.com/app@stable")  # tags move
    assert show("example.com/app@stable") == ids["2.0.0"]
    jetpack_dir("untag", "example.com/app@stable")
    missing = jetpack_dir("show-image", "example.com/app@stable", check=False)
    assert missing.returncode == 1
    unknown = jetpack_dir("show-image", "example.com/app:9.9.9", check=False)
    assert unknown.returncode == 1
    assert "1.0.0" in unknown.stderr  # lists the candidates
    short = jetpack_dir("show-image", "sha512-", check=False)
    assert short.returncode == 1


def test_killed_import_leaves_nothing_and_gc_cleans(root: None, jetpack_dir: Jetpack,
                                                    tmp_path: Path) -> None:
    jetpack_dir("init")
    before = listing(jetpack_dir.root)
    fifo = tmp_path / "slow.aci"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetpack.cli.main", "-c", str(jetpack_dir.conf), "import",
         str(fifo)], env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with fifo.open("wb") as writer:
        aci = aci_from_entries(tmp_path / "big.aci", [
            manifest_entry(manifest("example.com/big")), dir_entry("rootfs"),
            *[file_entry(f"rootfs/f{i}", os.urandom(4096)) for i in range(64)]])
        data = aci.read_bytes()
        writer.write(data[: len(data) // 2])
        writer.flush()
        deadline = time.monotonic() + 30
        while not any((jetpack_dir.root / "tmp").glob("tmp-*")):
            assert time.monotonic() < deadline, "the import never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert images_json(jetpack_dir) == []
    assert not any((jetpack_dir.root / "images").iterdir())
    out = jetpack_dir("gc")
    assert "removed" in out.stdout
    assert listing(jetpack_dir.root) == before


def test_image_in_use_is_not_destroyed(root: None, jetpack_dir: Jetpack,
                                       busybox_aci: Path) -> None:
    jetpack_dir("init")
    image_id = jetpack_dir("import", str(busybox_aci)).stdout.split()[-1]
    pod = jetpack_dir("prepare", "example.com/busybox", "--name", "user").stdout.split()[-1]
    out = jetpack_dir("destroy-image", image_id, check=False)
    assert out.returncode == 1
    assert "pod user" in out.stderr
    jetpack_dir("destroy", pod)
    jetpack_dir("destroy-image", image_id)
    assert images_json(jetpack_dir) == []
    kinds = [json.loads(e)["type"] for e in
             jetpack_dir("events", "--no-follow", "--json").stdout.splitlines()]
    assert kinds == ["image.imported", "pod.prepared", "pod.destroyed", "image.removed"]


def test_force_destroys_stopped_pods_then_the_image(root: None, jetpack_dir: Jetpack,
                                                    busybox_aci: Path) -> None:
    jetpack_dir("init")
    image_id = jetpack_dir("import", str(busybox_aci)).stdout.split()[-1]
    pod = jetpack_dir("prepare", "example.com/busybox", "--name", "user").stdout.split()[-1]
    jetpack_dir("destroy-image", "--force", image_id)
    assert images_json(jetpack_dir) == []
    assert json.loads(jetpack_dir("list", "--json").stdout) == []
    assert not (jetpack_dir.root / "pods" / pod).exists()
    assert not (jetpack_dir.root / "images" / image_id).exists()


def test_concurrent_imports_of_one_aci_make_one_image(root: None, jetpack_dir: Jetpack,
                                                      busybox_aci: Path) -> None:
    jetpack_dir("init")
    argv = [sys.executable, "-m", "jetpack.cli.main", "-c", str(jetpack_dir.conf), "import",
            str(busybox_aci)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert {out.splitlines()[-1] for out, _ in outs} == {sha512_of_tar(busybox_aci)}
    assert len(images_json(jetpack_dir)) == 1
    kinds = [json.loads(e)["type"] for e in
             jetpack_dir("events", "--no-follow", "--json").stdout.splitlines()]
    assert kinds == ["image.imported"]
    assert not any((jetpack_dir.root / "tmp").iterdir())


def test_refusals_before_sealing_leave_nothing(root: None, jetpack_dir: Jetpack,
                                               busybox_aci: Path, tmp_path: Path) -> None:
    jetpack_dir("init")
    before = listing(jetpack_dir.root)
    wrong = jetpack_dir("import", str(busybox_aci), "--name", "example.com/other", check=False)
    assert wrong.returncode == 1
    assert "named example.com/busybox, not example.com/other" in wrong.stderr
    sig = tmp_path / "busybox.aci.asc"
    sig.write_text("-----BEGIN PGP SIGNATURE-----\n")
    signed = jetpack_dir("import", str(busybox_aci), "--sig", str(sig), check=False)
    assert signed.returncode == 1
    assert "Traceback" not in signed.stderr
    assert "busybox.aci is signed by a key not trusted for example.com/busybox" in signed.stderr
    assert images_json(jetpack_dir) == []
    assert listing(jetpack_dir.root) == before
    short = jetpack_dir("show-image", "sha512-abc", check=False)
    assert short.returncode == 1
    assert "too short" in short.stderr


def test_killed_import_on_zfs_leaves_no_image_and_gc_destroys_its_dataset(
        jetpack_zfs: Jetpack, zfs_dataset: str, tmp_path: Path) -> None:
    jetpack_zfs("init")
    before = zfs("list", "-H", "-t", "all", "-o", "name", "-r", zfs_dataset)
    fifo = tmp_path / "slow.aci"
    os.mkfifo(fifo)
    with subprocess.Popen(
            [sys.executable, "-m", "jetpack.cli.main", "-c", str(jetpack_zfs.conf), "import",
             str(fifo)], env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc, fifo.open("wb") as writer:
        aci = aci_from_entries(tmp_path / "big.aci", [
            manifest_entry(manifest("example.com/big")), dir_entry("rootfs"),
            *[file_entry(f"rootfs/f{i}", os.urandom(4096)) for i in range(64)]])
        data = aci.read_bytes()
        writer.write(data[: len(data) // 2])
        writer.flush()
        deadline = time.monotonic() + 60
        while "tmp-" not in zfs("list", "-H", "-o", "name", "-r", zfs_dataset):
            assert time.monotonic() < deadline, "the import never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert images_json(jetpack_zfs) == []
    out = jetpack_zfs("gc")
    assert "tmp-" in out.stdout
    assert zfs("list", "-H", "-t", "all", "-o", "name", "-r", zfs_dataset) == before


def test_destroy_image_on_zfs(jetpack_zfs: Jetpack, zfs_dataset: str, tmp_path: Path) -> None:
    base, mid, top = layered(tmp_path)
    jetpack_zfs("init")
    base_id = jetpack_zfs("import", str(base)).stdout.split()[-1]
    jetpack_zfs("import", str(mid))
    top_id = jetpack_zfs("import", str(top)).stdout.split()[-1]
    jetpack_zfs("destroy-image", top_id)
    jetpack_zfs("destroy-image", base_id)  # no clone of it is left
    names = zfs("list", "-H", "-t", "all", "-o", "name", "-r", f"{zfs_dataset}/images").split()
    assert not [n for n in names if top_id in n or base_id in n]


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A throwaway GnuPG home with one signing key (no passphrase) and its exported public
    key; its agent is stopped afterwards."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Image Signer <signer@example.com>", "ed25519",
                    "sign", "never"], check=True, capture_output=True)
    public = tmp_path / "signer.pub"
    with public.open("wb") as out:
        subprocess.run([*gpg, "--armor", "--export"], stdout=out, check=True)
    yield home, public
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def sign(home: Path, path: Path) -> Path:
    sig = path.with_name(path.name + ".asc")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
                    "--passphrase", "", "--armor", "--detach-sign", "--output", str(sig),
                    str(path)], check=True, capture_output=True)
    return sig


def test_import_checks_a_detached_signature(root: None, jetpack_dir: Jetpack, tmp_path: Path,
                                            busybox_aci: Path,
                                            signer: tuple[Path, Path]) -> None:
    home, public = signer
    jetpack_dir("init")
    jetpack_dir("trust", "--prefix", "example.com/busybox", str(public), "--yes")
    sig = sign(home, busybox_aci)
    # a signature over other bytes is refused, and nothing stays
    tampered = tmp_path / "tampered.aci"
    tampered.write_bytes(busybox_aci.read_bytes() + b"\0" * 512)
    before = listing(jetpack_dir.root)
    bad = jetpack_dir("import", str(tampered), "--sig", str(sig), check=False)
    assert bad.returncode == 1, bad.stdout
    assert "Traceback" not in bad.stderr
    assert images_json(jetpack_dir) == []
    assert listing(jetpack_dir.root) == before
    # the signed archive imports, from a file and from stdin (the copy read is what is checked)
    good = jetpack_dir("import", str(busybox_aci), "--sig", str(sig))
    assert good.stdout.splitlines()[-1] == sha512_of_tar(busybox_aci)
    jetpack_dir("destroy-image", good.stdout.splitlines()[-1])
    with busybox_aci.open("rb") as stdin:
        piped = subprocess.run(
            [sys.executable, "-m", "jetpack.cli.main", "-c", str(jetpack_dir.conf), "import",
             "-", "--sig", str(sig)], stdin=stdin, capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines()[-1] == sha512_of_tar(busybox_aci)
