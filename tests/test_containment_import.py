"""Hostile images through the real import and fetch paths (issue 15, items 2, 9, 10, 12):
decompression bombs and entry floods, device nodes and file capabilities in an image, a local
file swapped between its signature check and its import, https redirected to plain http.

Each test runs the attack as a user would meet it (the CLI, or the Fetcher in-process where a
hook has to interpose), asserts it fails, and that the legitimate use beside it still works.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import ipaddress
import json
import lzma
import os
import secrets
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import test_fetch
import trio
from test_fetch import Signer, Site, cli, state

from jetpack.config import load_config
from jetpack.fetch import Fetcher, Insecure
from jetpack.state import StateDB
from jetpack.store.images import ImageStore
from jetpack.trust import add_key

from acis import aci_from_entries, dir_entry, file_entry, manifest, manifest_entry
from conftest import REPO, Jetpack, write_conf

# test_fetch's fixtures, shared: a throwaway gpg signer and a real HTTPS site on loopback
signer = test_fetch.signer
site = test_fetch.site

MiB = 1 << 20
BOMB_SIZE = 512 * MiB
RSS_LIMIT = 300 * MiB
IMPORT_DEADLINE = 180.0  # seconds; main's quadratic reader takes far longer on these bombs


# --- helpers -------------------------------------------------------------------------------

def _new_compressor(kind: str) -> Any:
    if kind == "bzip2":
        return bz2.BZ2Compressor(9)
    if kind == "gzip":
        return zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return lzma.LZMACompressor(preset=0)


def bomb_aci(path: Path, kind: str, size: int = BOMB_SIZE) -> Path:
    """An ACI whose rootfs holds one file of ``size`` zero bytes, compressed as a stream (the
    tar is never in memory or on disk): a few hundred bytes (bzip2) to a few hundred KB."""
    compressor = _new_compressor(kind)
    data = json.dumps(manifest("example.com/bomb")).encode()
    written = 0
    with path.open("wb") as out:
        def put(chunk: bytes) -> None:
            nonlocal written
            written += len(chunk)
            out.write(compressor.compress(chunk))

        def header(name: str, kind: bytes, size: int = 0, mode: int = 0o644) -> bytes:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, size, mode
            return info.tobuf(tarfile.PAX_FORMAT)

        put(header("manifest", tarfile.REGTYPE, len(data)) + data + bytes(-len(data) % 512))
        put(header("rootfs", tarfile.DIRTYPE, mode=0o755))
        put(header("rootfs/zeros", tarfile.REGTYPE, size))
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            put(zeros)
        put(bytes(1024))  # end-of-archive blocks
        put(bytes(-written % tarfile.RECORDSIZE))
        out.write(compressor.flush())
    return path


# Linux folds the old address space's high-water mark into the new program's at execve, and
# subprocess's vfork makes that the caller's: a CLI started from a pytest process of 300 MiB
# would report 300 MiB. A small Python forks the CLI instead and tells its peak on a pipe.
_MEASURE = """
import os, resource, sys
report = int(os.environ.pop("JETPACK_TEST_REPORT_FD"))
os.set_inheritable(report, False)
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "jetpack.cli.main", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run_measured(jp: Jetpack, *args: str) -> tuple[int, str, int]:
    """Run the CLI; (exit status, stderr, peak RSS in bytes of that one process). A 2 GiB
    address-space limit keeps a runaway importer from hurting the machine."""
    report_r, report_w = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(REPO), JETPACK_TEST_REPORT_FD=str(report_w))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, "-c", str(jp.conf), *args],
            stdout=out, stderr=err, env=env, pass_fds=(report_w,), start_new_session=True)
        os.close(report_w)
        try:
            proc.wait(timeout=IMPORT_DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            pytest.fail(f"jetpack {' '.join(args)} still ran after {IMPORT_DEADLINE}s")
        finally:
            with os.fdopen(report_r, "rb") as report:
                told = report.read().split()
        err.seek(0)
        assert len(told) == 2, f"the measuring process said {told!r}: {err.read()!r}"
        return int(told[0]), err.read().decode(errors="replace"), int(told[1]) * 1024


def store_listing(root: Path) -> set[str]:
    """Everything under the state root but the database files."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not p.name.startswith("jetpack.db")}


def images(jp: Jetpack) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(jp("images", "--json").stdout)
    return result


def device_nodes(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(os.path.join(dirpath, name))
    return found


def entry(name: str, kind: bytes, *, data: bytes = b"", mode: int = 0o644,
          devmajor: int = 0, devminor: int = 0, uid: int = 0, gid: int = 0,
          pax: dict[str, str] | None = None) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size = kind, mode, len(data)
        info.devmajor, info.devminor, info.uid, info.gid = devmajor, devminor, uid, gid
        info.pax_headers = dict(pax or {})
        tar.addfile(info, io.BytesIO(data) if data else None)
    return add


@pytest.fixture
def jp(root: None, jetpack_dir: Jetpack) -> Jetpack:
    jetpack_dir("init")
    return jetpack_dir


# --- 9: decompression bombs and entry floods -----------------------------------------------

@pytest.mark.parametrize("kind", ["bzip2", "gzip", "xz"])
def test_attack_decompression_bomb(jp: Jetpack, tmp_path: Path, kind: str) -> None:
    aci = bomb_aci(tmp_path / f"bomb.{kind}.aci", kind)
    assert aci.stat().st_size < MiB  # 512 MiB of tar in a few hundred bytes to ~500 KB
    before = store_listing(jp.root)
    # refused by a small images.max-size, in bounded memory, leaving nothing behind
    status, err, rss = run_measured(jp, "-o", "images.max-size=64M", "import", str(aci))
    assert status == 1, err
    assert "images.max-size" in err
    assert str(64 * MiB) in err
    assert "Traceback" not in err
    assert rss < RSS_LIMIT, f"{rss / MiB:.0f} MiB"
    assert images(jp) == []
    assert store_listing(jp.root) == before
    # within the default limits it imports, streaming: memory stays bounded all the same
    status, err, rss = run_measured(jp, "import", str(aci))
    assert status == 0, err
    assert rss < RSS_LIMIT, f"{rss / MiB:.0f} MiB"
    [image] = images(jp)
    assert image["size"] > BOMB_SIZE
    jp("destroy-image", image["id"])


def test_attack_entry_flood_refused_by_max_entries(jp: Jetpack, tmp_path: Path) -> None:
    aci = aci_from_entries(tmp_path / "many.aci", [
        manifest_entry(manifest("example.com/many")), dir_entry("rootfs"),
        *(file_entry(f"rootfs/f{i}") for i in range(150))])
    before = store_listing(jp.root)
    out = jp("-o", "images.max-entries=100", "import", str(aci), check=False)
    assert out.returncode == 1
    assert "more than 100 entries" in out.stderr
    assert "images.max-entries" in out.stderr
    assert images(jp) == []
    assert store_listing(jp.root) == before
    assert jp("import", str(aci)).returncode == 0  # the default (1000000) lets it in


def test_attack_huge_pax_header_refused(jp: Jetpack, tmp_path: Path) -> None:
    """tarfile reads an extended header's body whole: a compressed 64 MiB pax header would be
    64 MiB of memory per entry."""
    aci = aci_from_entries(tmp_path / "pax.aci", [
        manifest_entry(manifest("example.com/pax")), dir_entry("rootfs"),
        entry("rootfs/x", tarfile.REGTYPE, pax={"comment": "x" * (2 * MiB)})], mode="w:xz")
    before = store_listing(jp.root)
    out = jp("import", str(aci), check=False)
    assert out.returncode == 1
    assert "extended tar header" in out.stderr
    assert store_listing(jp.root) == before


# --- 2: device nodes, setuid bits, file capabilities ---------------------------------------

def test_attack_image_ships_host_memory_device(jp: Jetpack, tmp_path: Path) -> None:
    aci = aci_from_entries(tmp_path / "devmem.aci", [
        manifest_entry(manifest("example.com/devmem")), dir_entry("rootfs"),
        dir_entry("rootfs/dev"),
        entry("rootfs/dev/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1)])
    before = store_listing(jp.root)
    out = jp("import", str(aci), check=False)
    assert out.returncode == 1
    assert "'rootfs/dev/mem' is a character device node 1:1" in out.stderr
    assert device_nodes(jp.root) == []
    assert store_listing(jp.root) == before
    block = aci_from_entries(tmp_path / "sda.aci", [
        manifest_entry(manifest("example.com/sda")), dir_entry("rootfs"),
        entry("rootfs/sda", tarfile.BLKTYPE, mode=0o666, devmajor=8, devminor=0)])
    out = jp("import", str(block), check=False)
    assert out.returncode == 1
    assert "'rootfs/sda' is a block device node 8:0" in out.stderr
    assert device_nodes(jp.root) == []
    # the harmless ones (as debootstrap leaves them) still import
    null = aci_from_entries(tmp_path / "null.aci", [
        manifest_entry(manifest("example.com/null")), dir_entry("rootfs"),
        entry("rootfs/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)])
    assert jp("import", str(null)).returncode == 0
    [node] = device_nodes(jp.root)
    assert os.major(os.lstat(node).st_rdev) == 1
    assert os.minor(os.lstat(node).st_rdev) == 3


CAP_SYS_ADMIN = 21


def test_attack_file_capability_xattr_not_applied(jp: Jetpack, tmp_path: Path) -> None:
    # vfs_cap_data revision 2, effective, permitted = CAP_SYS_ADMIN
    capability = struct.pack("<5I", 0x02000001, 1 << CAP_SYS_ADMIN, 0, 0, 0)
    aci = aci_from_entries(tmp_path / "caps.aci", [
        manifest_entry(manifest("example.com/caps")), dir_entry("rootfs"),
        dir_entry("rootfs/bin"),
        entry("rootfs/bin/escalate", tarfile.REGTYPE, data=b"\x7fELF", mode=0o755,
              pax={"SCHILY.xattr.security.capability":
                   capability.decode("utf-8", "surrogateescape"),
                   "SCHILY.xattr.user.origin": "kept"}),
        entry("rootfs/bin/su", tarfile.REGTYPE, data=b"\x7fELF", mode=0o4755),
        entry("rootfs/bin/wall", tarfile.REGTYPE, data=b"\x7fELF", mode=0o2755, gid=5)])
    out = jp("import", str(aci))
    assert "security.capability" in out.stderr  # said, not silently dropped
    image_id = out.stdout.split()[-1]
    rootfs = jp.root / "images" / image_id / "rootfs"
    assert rootfs.is_dir()
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(rootfs / "bin/escalate", "security.capability", follow_symlinks=False)
    assert os.getxattr(rootfs / "bin/escalate", "user.origin") == b"kept"
    # setuid/setgid binaries keep their bits (an image's su works in its pods, as under docker)
    su = os.lstat(rootfs / "bin/su")
    assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o4755, 0)
    wall = os.lstat(rootfs / "bin/wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2755, 5)


# --- 10: the file verified is the file imported ---------------------------------------------

async def test_attack_fetch_file_swapped_after_verification(
        root: None, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gnupg

    conf = write_conf(tmp_path / "swap.conf", **{"root.path": str(tmp_path / "state"),
                                                 "storage.driver": "dir"})
    Jetpack(conf, tmp_path / "state")("init")
    config = load_config(conf, environ={})
    add_key(config, signer.public_key, "example.com/swap")
    name = "example.com/swap"
    good = aci_from_entries(tmp_path / "swap.aci", [
        manifest_entry(manifest(name)), dir_entry("rootfs"),
        file_entry("rootfs/payload", b"signed")])
    signer.sign(good)
    good_id = "sha512-" + hashlib.sha512(gzip.decompress(good.read_bytes())).hexdigest()
    evil = aci_from_entries(tmp_path / "evil.aci", [
        manifest_entry(manifest(name)), dir_entry("rootfs"),
        file_entry("rootfs/payload", b"attacker's")])
    # the attacker replaces the file right after gpg has checked it
    real_verify = gnupg.GPG.verify_file
    swapped = []

    def verify_then_swap(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_verify(self, *args, **kwargs)
        if not swapped:
            os.replace(evil, good)
            swapped.append(True)
        return result

    monkeypatch.setattr(gnupg.GPG, "verify_file", verify_then_swap)
    store = ImageStore(config, StateDB.for_root(config.root))
    record = await Fetcher(config, store, insecure=Insecure.parse("none")).fetch(str(good))
    assert swapped
    assert record.id == good_id
    tree = store.storage.image_path(record.id)
    assert (tree / "rootfs/payload").read_bytes() == b"signed"
    assert [r.id for r in store.all()] == [good_id]


async def test_attack_fetch_a_fifo(root: None, tmp_path: Path) -> None:
    """A FIFO cannot be read twice (verify, then import): refused, not hung on."""
    jp_ = state(tmp_path, "fifo")
    fifo = tmp_path / "pipe.aci"
    os.mkfifo(fifo)
    (tmp_path / "pipe.aci.asc").write_text("")
    with trio.fail_after(60):  # before the fix, open() waited for a writer forever
        out = await cli(jp_, tmp_path, "fetch", str(fifo))
    assert out.returncode == 1
    assert b"is not a regular file" in out.stderr


# --- 12: no redirect from https to plain http -----------------------------------------------

@pytest.fixture
async def plain_site(root: None, nursery: trio.Nursery) -> AsyncIterator[Site]:
    """The same kind of site over plain http, on another loopback address."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    host = str(ipaddress.IPv4Address("127.89.0.0") + secrets.randbelow(60000) + 2)
    config = HypercornConfig()
    config.bind = [f"{host}:80"]
    config.accesslog = config.errorlog = None
    plain = Site(host)
    done = trio.Event()
    await nursery.start(lambda task_status: serve(plain.app, config,  # type: ignore[arg-type]
                                                  shutdown_trigger=done.wait,
                                                  task_status=task_status))
    yield plain
    done.set()


def publish_elsewhere(site: Site, plain_site: Site, signer: Signer, tmp_path: Path) -> str:
    """A signed ACI served over plain http, which the https site redirects to."""
    name = f"{site.host}/redirected"
    aci = aci_from_entries(tmp_path / "redirected.aci", [
        manifest_entry(manifest(name)), dir_entry("rootfs"), file_entry("rootfs/a")])
    plain_site.files["/r.aci"] = aci.read_bytes()
    plain_site.files["/r.aci.asc"] = signer.sign(aci).read_bytes()
    site.redirects["/files/r.aci"] = f"http://{plain_site.host}/r.aci"
    site.redirects["/files/r.aci.asc"] = f"http://{plain_site.host}/r.aci.asc"
    return name


async def test_attack_https_redirects_to_plain_http(site: Site, plain_site: Site,
                                                    signer: Signer, tmp_path: Path) -> None:
    name = publish_elsewhere(site, plain_site, signer, tmp_path)
    jp_ = state(tmp_path, "redirect")
    key = tmp_path / "key.gpg"
    key.write_bytes(signer.public_key)
    assert jp_("trust", "--prefix", name, str(key), "--yes").returncode == 0
    url = f"https://{site.host}/files/r.aci"
    out = await cli(jp_, tmp_path, "fetch", url)
    assert out.returncode == 1
    assert f"{url} redirects to http://{plain_site.host}/r.aci".encode() in out.stderr
    assert b"--insecure=http" in out.stderr
    assert plain_site.requests == []  # refused before anything was asked over plain http
    assert jp_("images", "--json").stdout.strip() == "[]"
    assert list((jp_.root / "tmp").iterdir()) == []
    # allowed when the user allows plain http
    out = await cli(jp_, tmp_path, "fetch", url, "--insecure=http")
    assert out.returncode == 0, out.stderr
    assert "/r.aci?" in plain_site.requests


async def test_attack_discovery_redirected_to_plain_http(site: Site, plain_site: Site,
                                                         tmp_path: Path) -> None:
    name = f"{site.host}/lured"
    plain_site.pages["/lured"] = (
        f'<html><head><meta name="ac-discovery" content="{name} '
        f'http://{plain_site.host}/{{name}}.{{ext}}"></head></html>')
    site.redirects["/lured"] = f"http://{plain_site.host}/lured?ac-discovery=1"
    jp_ = state(tmp_path, "lured")
    out = await cli(jp_, tmp_path, "fetch", name, "--insecure=image")
    assert out.returncode == 1
    assert f"redirects to http://{plain_site.host}/lured".encode() in out.stderr
    assert plain_site.requests == []


def test_bomb_helper_builds_what_it_says(tmp_path: Path) -> None:
    """The bomb is a complete tar with the file size asked for (read by the real tar)."""
    aci = bomb_aci(tmp_path / "b.aci", "bzip2", 8 * MiB)
    listing = subprocess.run(["tar", "-tvjf", str(aci)], capture_output=True, text=True,
                             check=True).stdout
    assert "rootfs/zeros" in listing
    assert str(8 * MiB) in listing
