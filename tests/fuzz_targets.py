"""Fuzz targets shared by tests/test_fuzz.py (a short fixed-seed run) and bench/fuzz.py (the
long run): each target checks one input against the campaign's properties.

Properties, for every input: only errors of ``jetpack.errors`` come out (an HTTP app answers a
well-formed 4xx instead, never a 500); nothing is written outside the target's directory (a
sentinel parent and a decoy directory beside it are compared before and after); memory stays
bounded (the tracemalloc peak of one input is under ``MEMORY_BUDGET``).

Each target takes raw bytes (what atheris mutates and what the corpus in tests/fuzz_corpus/
holds) through ``check_bytes``, and a structured value (what the hypothesis strategy
``strategy()`` builds: a valid-ish archive, manifest, page or request, then mutated) through
``check``; both end in the same checks.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from hypothesis import strategies as st

from jetpack import errors
from jetpack.appc import ImageManifest, PodManifest
from jetpack.config import KEYS, load_config
from jetpack.discovery import Discovery, meta_tags
from jetpack.hostinfo import appc_arch, appc_os

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
MEMORY_BUDGET = 48 << 20  # bytes: the ACI reader holds at most a few 1 MiB pieces
ERROR_KINDS = {name for name in dir(errors) if isinstance(getattr(errors, name), type)
               and issubclass(getattr(errors, name), errors.JetpackError)}


class PropertyViolation(AssertionError):
    """An input broke one of the campaign's properties (the message says which)."""


@contextlib.contextmanager
def memory_bounded(budget: int = MEMORY_BUDGET) -> Iterator[None]:
    """Fail when the Python heap grows by more than ``budget`` while the block runs."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        if started:
            tracemalloc.stop()
    if peak - base > budget:
        raise PropertyViolation(f"memory: peak {peak - base} bytes > budget {budget}")


def snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``path`` (not following links): (mode, size, mtime_ns)."""
    out = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(top, name)
            st_ = os.lstat(full)
            out[os.path.relpath(full, path)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def corpus(target: str) -> list[bytes]:
    folder = CORPUS / target
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flips a byte, 1 truncates, 2 inserts a byte,
    3 deletes a byte."""
    buf = bytearray(data)
    for kind, position, value in edits:
        if not buf:
            break
        at = position % len(buf)
        if kind == 0:
            buf[at] ^= value or 1
        elif kind == 1:
            del buf[at:]
        elif kind == 2:
            buf.insert(at, value)
        else:
            del buf[at]
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
                 max_size=4)


# --------------------------------------------------------------------------- ACI reader


def image_manifest(name: str = "example.com/fuzz", **extra: Any) -> dict[str, Any]:
    return {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
            "labels": [{"name": "version", "value": "1.0.0"},
                       {"name": "os", "value": appc_os()},
                       {"name": "arch", "value": appc_arch()}], **extra}


ENTRY_NAMES = ["rootfs/a", "rootfs/b/c", "./rootfs/d", "rootfs//e", "rootfs/" + "n" * 150,
               "rootfs/" + "/".join(["deep"] * 40), "rootfs/" + "x" * 5000, "manifest",
               "rootfs", "rootfs/", "../escape", "/abs", "rootfs/../../decoy/x",
               "rootfs/a/../../x", "other", "rootfs/\u00fc", "rootfs/a/b", "rootfs/l/x",
               "rootfs/bad\x00name", "rootfs/s"]
LINK_TARGETS = ["rootfs/a", "rootfs/b/c", "/etc/passwd", "../../decoy/x", "a", "rootfs",
                "manifest", "rootfs/missing", "x" * 5000, "rootfs/l", "../x\x00y", ""]
TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
         tarfile.GNUTYPE_SPARSE, b"Z", b"V"]
PAX_KEYS = ["path", "linkpath", "size", "uid", "gid", "mtime", "uname", "comment",
            "SCHILY.xattr.user.k", "SCHILY.xattr.security.capability",
            "SCHILY.xattr.user.a\x00b", "SCHILY.xattr.", "SCHILY.xattr.trusted.overlay.opaque",
            "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name", "GNU.sparse.size",
            "GNU.sparse.map", "GNU.sparse.offset", "GNU.sparse.numbytes", "hdrcharset"]
PAX_VALUES = ["0", "1", "-1", "1e400", "nan", "inf", "99999999999999999999999", "rootfs/p",
              "0,1,2", "BINARY", "abc", "", "1.5", "\u00e9", "rootfs/q\x00r", "9" * 30]
BIG_IDS = [0, 1, 1000, 65534, 2**21 - 1, 2**31, 2**32, 2**40, 2**63]
MTIMES = [0, 1_500_000_000, -1, 2**33, 2**40, 2**62, 8**11 - 1]


@dataclass
class TarEntry:
    name: str
    type: bytes
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 1_500_000_000
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


@dataclass
class AciInput:
    entries: list[TarEntry]
    format: int = tarfile.PAX_FORMAT
    compression: str = "gzip"
    global_pax: dict[str, str] = field(default_factory=dict)
    tar_edits: list[tuple[int, int, int]] = field(default_factory=list)
    edits: list[tuple[int, int, int]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        fmt = self.format
        with tarfile.open(fileobj=buf, mode="w", format=fmt,
                          pax_headers=self.global_pax or None,
                          encoding="utf-8", errors="surrogateescape") as tar:
            for entry in self.entries:
                info = tarfile.TarInfo(entry.name)
                info.type = entry.type
                info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
                info.mtime = entry.mtime  # type: ignore[assignment]  # tarfile takes floats
                info.linkname = entry.linkname
                info.devmajor, info.devminor = entry.devmajor, entry.devminor
                info.pax_headers = dict(entry.pax)
                regular = entry.type in tarfile.REGULAR_TYPES
                info.size = len(entry.data) if regular else 0
                try:
                    tar.addfile(info, io.BytesIO(entry.data) if regular else None)
                except (ValueError, UnicodeError, OverflowError, tarfile.TarError):
                    continue  # this format cannot hold this entry: leave it out
        raw = mutate(buf.getvalue(), self.tar_edits)
        packed = {"none": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress,
                  "xz": lzma.compress}[self.compression](raw)
        return mutate(packed, self.edits)


@st.composite
def tar_entries(draw: st.DrawFn) -> TarEntry:
    kind = draw(st.sampled_from(TYPES))
    return TarEntry(
        name=draw(st.sampled_from(ENTRY_NAMES) | st.text(max_size=20).map("rootfs/".__add__)),
        type=kind,
        data=draw(st.binary(max_size=64)) if kind in tarfile.REGULAR_TYPES else b"",
        mode=draw(st.sampled_from([0o644, 0o755, 0o4755, 0o2711, 0o1777, 0, 0o7777, 0o777777])),
        uid=draw(st.sampled_from(BIG_IDS)),
        gid=draw(st.sampled_from(BIG_IDS)),
        mtime=draw(st.sampled_from(MTIMES)),
        linkname=draw(st.sampled_from(LINK_TARGETS)),
        devmajor=draw(st.sampled_from([0, 1, 4, 2**21 - 1])),
        devminor=draw(st.sampled_from([0, 1, 3, 5, 9, 2**21 - 1])),
        pax=draw(st.dictionaries(st.sampled_from(PAX_KEYS), st.sampled_from(PAX_VALUES),
                                 max_size=2)),
    )


@st.composite
def aci_inputs(draw: st.DrawFn) -> AciInput:
    manifest = json.dumps(draw(st.sampled_from([
        image_manifest(), image_manifest(app={"exec": ["/a"], "user": "0", "group": "0"}),
        image_manifest(dependencies=[{"imageName": "example.com/missing"}]),
        image_manifest(pathWhitelist=["/a"]), {"acKind": "ImageManifest"}, [],
    ]))).encode()
    head = [TarEntry("manifest", tarfile.REGTYPE, manifest),
            TarEntry("rootfs", tarfile.DIRTYPE, mode=0o755)]
    body = draw(st.lists(tar_entries(), max_size=6))
    entries = head + body
    if draw(st.booleans()):
        entries = draw(st.permutations(entries))
    return AciInput(
        entries=list(entries),
        format=draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT,
                                     tarfile.USTAR_FORMAT])),
        compression=draw(st.sampled_from(["none", "gzip", "bzip2", "xz"])),
        global_pax=draw(st.dictionaries(st.sampled_from(PAX_KEYS), st.sampled_from(PAX_VALUES),
                                        max_size=2)),
        tar_edits=draw(st.one_of(st.just([]), EDITS)),
        edits=draw(st.one_of(st.just([]), EDITS)),
    )


class AciTarget:
    """Imports into a dir-driver store whose root sits in a sentinel directory beside a decoy
    tree; a failed import must leave no image, row or staging tree, and nothing may change
    outside the root."""

    name = "aci"

    def __init__(self, base: Path) -> None:
        from jetpack.state import StateDB
        from jetpack.storage.dir import DirStorage
        from jetpack.store.images import ImageStore

        self.sentinel = base / "sentinel"
        self.root = self.sentinel / "root"
        self.decoy = self.sentinel / "decoy"
        (self.decoy / "x").mkdir(parents=True)
        (self.decoy / "keep").write_text("keep")
        self.root.mkdir()
        config = load_config(None, [f"root.path={self.root}", "storage.driver=dir",
                                    "images.max-size=32M", "images.max-entries=5000"],
                             environ={})
        storage = DirStorage(root=self.root, use_overlay=False)
        storage.init()
        self.store = ImageStore(config, StateDB.for_root(self.root, create=True), storage)
        self.outside = snapshot(self.sentinel.parent)
        self.outside = {k: v for k, v in self.outside.items() if not _under(k, "sentinel/root")}

    def strategy(self) -> st.SearchStrategy[Any]:
        return aci_inputs()

    def check(self, value: AciInput) -> None:
        self.check_bytes(value.to_bytes())

    def check_bytes(self, data: bytes) -> None:
        record = None
        with memory_bounded(), contextlib.redirect_stderr(io.StringIO()):
            try:
                record = self.store.import_aci(io.BytesIO(data), source_name="fuzz")
            except errors.JetpackError:
                pass
        left = sorted(os.listdir(self.root / "tmp"))
        if left:
            raise PropertyViolation(f"import left staging trees behind: {left}")
        images = sorted(os.listdir(self.root / "images"))
        rows = [r.id for r in self.store.all()]
        expected = [] if record is None else [record.id]
        if images != expected or rows != expected:
            raise PropertyViolation(f"store holds trees {images} and rows {rows}, "
                                    f"expected {expected}")
        outside = {k: v for k, v in snapshot(self.sentinel.parent).items()
                   if not _under(k, "sentinel/root")}
        if outside != self.outside:
            changed = set(outside.items()) ^ set(self.outside.items())
            raise PropertyViolation(f"written outside the store: {sorted(changed)[:5]}")
        if record is not None:
            self.store.destroy(record.id)


def _under(relative: str, prefix: str) -> bool:
    return relative == prefix or relative.startswith(prefix + "/")


# --------------------------------------------------------------------------- manifests

JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=False) | st.text(max_size=12)
               | st.sampled_from(["sha512-" + "a" * 128, "/usr/bin", "example.com/x", "0755",
                                  "1.0.0", "linux", "amd64", "host", "empty", "tcp", "", "-1",
                                  "os/linux/capabilities-retain-set", "resource/memory",
                                  "1G", "500m", "\u0000", "a" * 300]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)

POD_MANIFEST = {
    "acKind": "PodManifest", "acVersion": "0.8.11",
    "apps": [{"name": "app", "image": {"name": "example.com/x", "id": "sha512-" + "a" * 128,
                                       "labels": [{"name": "version", "value": "1"}]},
              "app": {"exec": ["/bin/sh", "-c", "true"], "user": "0", "group": "0",
                      "environment": [{"name": "A", "value": "b"}],
                      "mountPoints": [{"name": "data", "path": "/data"}],
                      "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
                      "isolators": [{"name": "resource/memory",
                                     "value": {"limit": "1G"}}]},
              "mounts": [{"volume": "data", "path": "/data"}],
              "annotations": [{"name": "a", "value": "b"}]}],
    "volumes": [{"name": "data", "kind": "empty", "mode": "0755", "uid": 0, "gid": 0}],
    "isolators": [{"name": "os/linux/capabilities-retain-set",
                   "value": {"set": ["CAP_NET_BIND_SERVICE"]}}],
    "annotations": [{"name": "created", "value": "2026-01-01T00:00:00Z"}],
    "ports": [{"name": "http", "hostPort": 8080}],
}
IMAGE_MANIFEST = image_manifest(
    app={"exec": ["/bin/sh"], "user": "0", "group": "0", "workingDirectory": "/",
         "eventHandlers": [{"name": "pre-start", "exec": ["/bin/true"]}],
         "environment": [{"name": "PATH", "value": "/bin"}],
         "isolators": [{"name": "resource/cpu", "value": {"limit": "500m"}}],
         "mountPoints": [{"name": "data", "path": "/data", "readOnly": True}],
         "ports": [{"name": "http", "protocol": "tcp", "port": 80, "count": 1}]},
    dependencies=[{"imageName": "example.com/base", "imageID": "sha512-" + "b" * 128,
                   "labels": [{"name": "version", "value": "1"}], "size": 10}],
    pathWhitelist=["/bin/sh"], annotations=[{"name": "authors", "value": "x"}])


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any, depth: int = 0) -> Any:
    """``doc`` with a few values replaced, removed, added or changed in case."""
    if isinstance(doc, dict) and doc:
        out = dict(doc)
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(sorted(out)))
            action = draw(st.integers(0, 4))
            if action == 0:
                out[key] = draw(JSON_VALUES)
            elif action == 1:
                del out[key]
                if not out:
                    break
            elif action == 2:
                out[key.upper()] = out.pop(key)
            elif action == 3:
                out[draw(st.text(max_size=6))] = draw(JSON_VALUES)
            else:
                out[key] = draw(mutated_json(out[key], depth + 1))
        return out
    if isinstance(doc, list) and doc:
        out_list = list(doc)
        at = draw(st.integers(0, len(out_list) - 1))
        action = draw(st.integers(0, 3))
        if action == 0:
            out_list[at] = draw(JSON_VALUES)
        elif action == 1:
            out_list.append(out_list[at])  # a duplicate (names must be unique)
        elif action == 2:
            del out_list[at]
        else:
            out_list[at] = draw(mutated_json(out_list[at], depth + 1))
        return out_list
    return draw(st.just(doc) | JSON_VALUES)


class ManifestTarget:
    """Image and pod manifests: only ValidationError; what parses survives to_json → parse."""

    name = "manifest"

    def strategy(self) -> st.SearchStrategy[Any]:
        docs = (mutated_json(IMAGE_MANIFEST) | mutated_json(POD_MANIFEST)
                | mutated_json({"acKind": "PodManifest", "acVersion": "0.8.11", "apps": []}))
        return st.tuples(docs, EDITS).map(
            lambda pair: mutate(json.dumps(pair[0]).encode(), pair[1]))

    def check(self, value: bytes) -> None:
        self.check_bytes(value)

    def check_bytes(self, data: bytes) -> None:
        with memory_bounded():
            for kind in (ImageManifest, PodManifest):
                try:
                    parsed = kind.from_json(data)
                except errors.ValidationError:
                    continue
                text = parsed.to_json()
                again = kind.from_json(text)
                if again != parsed or again.to_json() != text:
                    raise PropertyViolation(f"{kind.__name__} does not survive to_json: "
                                            f"{text[:200]}")


# --------------------------------------------------------------------------- config

CONFIG_VALUES = ["10s", "100ms", "1.5m", "9" * 400 + "d", "nan", "inf", "-1", "0", "1",
                 "\u00b2", "\u0663", "16G", "1T", "99999999999999999999T", "1KiB", "on", "off",
                 "maybe", "172.23.0.1/16", "10.0.0.0/8", "10.0.0.1/31", "::1/64", "host:99999",
                 "127.0.0.1:0", ":80", "a" * 64, "0f" * 16, "dir", "zfs", "", " ", "1e9"]


class ConfigTarget:
    """jetpack.conf and -o overrides: only ConfigError; every value that loads is usable
    through its typed accessor (a duration is finite)."""

    name = "config"

    def __init__(self, base: Path) -> None:
        self.file = base / "jetpack.conf"

    def strategy(self) -> st.SearchStrategy[Any]:
        line = st.one_of(
            st.tuples(st.sampled_from([*KEYS, "images.zfs.compression", "jail.param.x",
                                       "root.zfs.mountpoint", "unknown.key"]),
                      st.sampled_from(CONFIG_VALUES) | st.text(max_size=10))
            .map(lambda kv: f"{kv[0]} = {kv[1]}"),
            st.text(max_size=30), st.just("# comment"), st.just(""))
        return st.tuples(st.lists(line, max_size=8), EDITS).map(
            lambda pair: mutate("\n".join(pair[0]).encode("utf-8", "surrogatepass"), pair[1]))

    def check(self, value: bytes) -> None:
        self.check_bytes(value)

    def check_bytes(self, data: bytes) -> None:
        self.file.write_bytes(data)
        lines = data.decode("utf-8", "replace").splitlines()
        for source in ("file", "overrides"):
            try:
                if source == "file":
                    config = load_config(self.file, environ={})
                else:
                    config = load_config(None, [line for line in lines if "\x00" not in line],
                                         environ={})
            except errors.ConfigError:
                continue
            _use_every_value(config)


def _use_every_value(config: Any) -> None:
    from jetpack import config as cfg

    for name, key in KEYS.items():
        try:
            if key.check is cfg._check_duration:  # the key's declared type
                seconds = config.duration(name)
                try:
                    timedelta(seconds=seconds)  # how events.retention.age is used
                except OverflowError:
                    raise PropertyViolation(f"{name} = {config[name]!r} is not a usable "
                                            "duration") from None
            elif key.check is cfg._check_size:
                config.size(name)
            elif key.check is cfg._check_bool:
                config.bool(name)
            elif key.check in (cfg._check_int, cfg._check_port):
                config.int(name)
        except ValueError as exc:
            raise PropertyViolation(f"{name} = {config[name]!r} loaded but is unusable: "
                                    f"{exc}") from None


# --------------------------------------------------------------------------- discovery


@dataclass
class Page:
    status: int
    body: bytes
    content_type: str = "text/html"
    location: str | None = None


DISCOVERY_NAME = "example.com/app/sub"
META = ["<meta name=\"ac-discovery\" content=\"example.com https://e.com/{name}-{version}.{ext}\">",
        "<meta name=\"ac-discovery-pubkeys\" content=\"example.com https://e.com/pubkeys.gpg\">",
        "<meta name=ac-discovery content='example.com/app {os}{{arch}}.{ext}'>",
        "<META NAME=\"ac-discovery\" CONTENT=\"example.com/app/sub\thttps://x/{ext}\">",
        "<meta name=\"ac-discovery\">", "<meta content=\"a b\" name=\"ac-discovery\"/>",
        "<!-- <meta name=\"ac-discovery\" content=\"a b\"> -->", "<meta name",
        "&#x110000;", "&#0;", "<![CDATA[", "<script>", "</", "<meta name=\"ac-discovery\" "
        "content=\"example.com {" + "x" * 50 + "}\">", "\udcff"]


class DiscoveryTarget:
    """Discovery over a MockTransport serving fuzzed pages (and redirects): only FetchError."""

    name = "discovery"

    def strategy(self) -> st.SearchStrategy[Any]:
        body = st.lists(st.sampled_from(META) | st.text(max_size=20), max_size=6).map(
            lambda parts: "".join(parts).encode("utf-8", "surrogateescape"))
        page = st.builds(
            Page, status=st.sampled_from([200, 200, 404, 500, 301, 302, 307]),
            body=st.tuples(body, EDITS).map(lambda pair: mutate(pair[0], pair[1])),
            content_type=st.sampled_from(["text/html", "text/html; charset=latin-1",
                                          "text/html; charset=bogus", "text/html; charset=",
                                          "application/octet-stream"]),
            location=st.none() | st.sampled_from([
                "https://example.com/", "http://example.com/", "/relative?x=1", "ftp://x/",
                "https://[::1", "http://a:99999/", "//other.example/x", "https://\u00e9.com/",
                "", "https://example.com:-1/", "\x00", "javascript:x"]) | st.text(max_size=10))
        return st.lists(page, min_size=1, max_size=4)

    def check_bytes(self, data: bytes) -> None:
        """A JSON list of pages (``status``, ``body``, ``content_type``, ``location``), else
        one page with ``data`` as its body."""
        try:
            pages = [Page(int(p["status"]), str(p.get("body", "")).encode(),
                          str(p.get("content_type", "text/html")),
                          None if p.get("location") is None else str(p["location"]))
                     for p in json.loads(data)]
        except (ValueError, TypeError, KeyError, AttributeError):
            pages = []
        self.check([p for p in pages if 100 <= p.status < 600] or [Page(200, data)])

    def check(self, pages: list[Page]) -> None:
        with memory_bounded():
            html = pages[0].body.decode("utf-8", "replace")
            for kind, prefix, template in meta_tags(html):
                assert isinstance(kind + prefix + template, str)
            trio.run(self._discover, pages)

    @staticmethod
    async def _discover(pages: list[Page]) -> None:
        served = iter(range(1000))

        def handler(request: httpx.Request) -> httpx.Response:
            del request
            page = pages[next(served) % len(pages)]
            headers = {"content-type": page.content_type}
            if page.location is not None and 300 <= page.status < 400:
                headers["location"] = page.location
            try:
                return httpx.Response(page.status, headers=headers, content=page.body)
            except (ValueError, UnicodeError):  # a header httpx cannot even send
                return httpx.Response(page.status, content=page.body)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            discovery = Discovery(http, insecure_http=True)
            for kind in ("endpoints", "pubkeys"):
                try:
                    found: list[Any] = await (
                        discovery.endpoints(DISCOVERY_NAME, {"version": "1"})
                        if kind == "endpoints" else discovery.pubkeys(DISCOVERY_NAME))
                except errors.FetchError:
                    continue
                assert found


# --------------------------------------------------------------------------- ASGI apps


@dataclass
class AsgiInput:
    """One connection to an ASGI app: its scope's parts and what the client sends."""

    type: str
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    messages: list[dict[str, Any]]
    client: str = "127.0.0.1"
    then: str = "disconnect"  # after the messages: "disconnect" or "hang" (a slow client)


def _scope(value: AsgiInput) -> dict[str, Any]:
    raw_path = value.path.encode("utf-8", "surrogateescape")
    # what a server hands the app: the percent-decoded path (hypercorn decodes with replace)
    path = urllib.parse.unquote(raw_path.decode("ascii", "replace"))
    return {"type": value.type, "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": value.method, "scheme": "http", "path": path, "raw_path": raw_path,
            "query_string": value.query, "root_path": "", "headers": value.headers,
            "client": (value.client, 40000), "server": ("127.0.0.1", 1104)}


async def drive(app: Callable[..., Any], value: AsgiInput, *, limit: float
                ) -> list[dict[str, Any]]:
    """Run one connection; what the app sent. A hang past ``limit`` s raises TooSlow."""
    pending = list(value.messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if pending:
            return pending.pop(0)
        if value.then == "hang":
            await trio.sleep_forever()
        return {"type": "websocket.disconnect" if value.type == "websocket"
                else "http.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    with trio.move_on_after(limit) as scope:
        await app(_scope(value), receive, send)
    if scope.cancelled_caught:
        raise TooSlow(f"no answer within {limit} s")
    return sent


class TooSlow(PropertyViolation):
    """The app did not finish with a client that had finished."""


def check_http_answer(sent: list[dict[str, Any]], *, json_errors: bool) -> int:
    """The status of a well-formed HTTP answer (start, then bodies ending without more_body),
    refusing 5xx and, for ``json_errors``, an error body that is not the project's object."""
    if not sent:
        return 0  # the client went away first: nothing to answer
    start, bodies = sent[0], sent[1:]
    if start.get("type") != "http.response.start":
        raise PropertyViolation(f"first message is {start.get('type')!r}")
    status = start["status"]
    if not isinstance(status, int) or not 200 <= status < 500:
        body = b"".join(b.get("body", b"") for b in bodies)
        raise PropertyViolation(f"status {status}: {body!r}")
    for name, header in start.get("headers", []):
        if not isinstance(name, bytes) or not isinstance(header, bytes):
            raise PropertyViolation(f"header {name!r}: {header!r} is not bytes")
    if any(b.get("type") != "http.response.body" for b in bodies):
        raise PropertyViolation(f"unexpected message in {[b.get('type') for b in bodies]}")
    body = b"".join(b.get("body", b"") for b in bodies)
    if status >= 400 and json_errors:
        try:
            error = json.loads(body)
        except ValueError:
            raise PropertyViolation(f"{status} with a body that is not JSON: {body!r}") from None
        if not (isinstance(error, dict) and isinstance(error.get("error"), str)):
            raise PropertyViolation(f"{status} without the error object: {body!r}")
        if "kind" in error and error["kind"] not in ERROR_KINDS:
            raise PropertyViolation(f"{status} names an unknown error kind: {body!r}")
    return status


def check_websocket_answer(sent: list[dict[str, Any]]) -> None:
    """Refused with an HTTP status (4xx, 503) or accepted and then closed with a known code."""
    if not sent:
        return
    first = sent[0]["type"]
    if first == "websocket.http.response.start":
        status = sent[0]["status"]
        if not (400 <= status < 500 or status == 503):
            raise PropertyViolation(f"websocket refused with status {status}")
        return
    if first != "websocket.accept":
        raise PropertyViolation(f"websocket answered first with {first!r}")
    last = sent[-1]
    if last["type"] != "websocket.close":
        raise PropertyViolation(f"websocket ended with {last['type']!r}, not a close")
    if last["code"] not in (1000, 1001, 4400, 4408, 4410):
        raise PropertyViolation(f"websocket closed with {last['code']}: {last.get('reason')!r}")
    if len(last.get("reason", "").encode()) > 123:
        raise PropertyViolation("a close reason longer than 123 bytes")


def body_messages(chunks: list[bytes], *, last_more: bool = False) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": chunk,
             "more_body": i < len(chunks) - 1 or last_more} for i, chunk in enumerate(chunks)]


SEGMENTS = ["acMetadata", "v1", "pod", "apps", "annotations", "manifest", "uuid", "hmac",
            "sign", "verify", "image", "id", "alpha", "%2e%2e", "..", "", "%00", "%ff",
            "\u00e9", "%C3%A9", "a" * 300, "v1?x", "%2F"]
HEADER_NAMES = [b"content-type", b"authorization", b"host", b"content-length",
                b"transfer-encoding", b"x-\xff", b"", b"Authorization"]
HEADER_VALUES = [b"application/x-www-form-urlencoded", b"Bearer secret-token", b"bearer \xff",
                 b"-1", b"chunked", b"\xff\xfe", b"", b"Bearer "]
FORMS = [b"content=hello", b"content=hello&uuid=&signature=", b"content=%ff%fe&uuid=x",
         b"content=a&uuid=0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a90&signature=\xff",
         b"content=a&uuid=%00&signature=%C3%A9", b"&&==&", b"content", b"\xff" * 10]


class MdsTarget:
    """The metadata service's ASGI app over a static directory of two pods."""

    name = "mds"

    def __init__(self) -> None:
        from jetpack.mds.service import AppMetadata, MetadataService, PodMetadata, StaticDirectory
        from jetpack.mds.tokens import pod_token

        directory = StaticDirectory()
        self.tokens = []
        for address, name, number in (("127.0.0.1", "alpha", 1), ("127.0.0.2", "beta", 2)):
            uuid = f"0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a9{number}"
            token = pod_token(b"k" * 32, uuid)
            self.tokens.append(token)
            directory.by_address[address] = PodMetadata(
                uuid=uuid, token=token, manifest=json.dumps(POD_MANIFEST),
                annotations=[{"name": "a", "value": "b"}],
                apps={name: AppMetadata("sha512-" + "a" * 128, json.dumps(IMAGE_MANIFEST))})
        self.app = MetadataService(directory, b"s" * 32)

    def strategy(self) -> st.SearchStrategy[Any]:
        segment = st.sampled_from(SEGMENTS + self.tokens) | st.text(max_size=6)
        path = st.lists(segment, max_size=7).map(lambda parts: "/" + "/".join(parts))
        valid = st.lists(st.sampled_from(SEGMENTS), max_size=3).map(
            lambda rest: "/".join(["", self.tokens[0], "acMetadata", "v1", *rest]))
        return st.builds(
            AsgiInput,
            type=st.sampled_from(["http", "http", "websocket"]),
            method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "get", "\u00e9",
                                    ""]),
            path=valid | path,
            query=st.sampled_from([b"", b"x=1", b"\xff", b"content=a"]),
            headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES),
                                       st.sampled_from(HEADER_VALUES)), max_size=3),
            messages=st.lists(st.sampled_from(FORMS) | st.binary(max_size=40), max_size=3)
            .map(body_messages) | st.just([{"type": "http.disconnect"}])
            | st.just([{"type": "http.request", "body": b"x" * 70_000}]),
            client=st.sampled_from(["127.0.0.1", "127.0.0.2", "127.0.0.3", ""]),
            then=st.sampled_from(["disconnect", "hang"]),
        )

    def check_bytes(self, data: bytes) -> None:
        self.check(decode_asgi(data))

    def check(self, value: AsgiInput) -> None:
        with memory_bounded():
            trio.run(self._check, value, clock=trio.testing.MockClock(autojump_threshold=0))

    async def _check(self, value: AsgiInput) -> None:
        sent = await drive(self.app, value, limit=60)
        if value.type == "http":
            check_http_answer(sent, json_errors=False)
        elif sent:
            raise PropertyViolation(f"the MDS answered a websocket: {sent}")


def decode_asgi(data: bytes) -> AsgiInput:
    """An input from bytes (atheris, the corpus): a JSON object with AsgiInput's fields
    (bytes as latin-1 text); anything else is the body of a POST to a pod's sign endpoint."""
    try:
        obj = json.loads(data)
        return AsgiInput(
            type=str(obj["type"]), method=str(obj["method"]), path=str(obj["path"]),
            query=str(obj.get("query", "")).encode("latin-1", "replace"),
            headers=[(str(k).encode("latin-1", "replace"), str(v).encode("latin-1", "replace"))
                     for k, v in obj.get("headers", [])],
            messages=[{**m, **({"body": m["body"].encode("latin-1", "replace")}
                               if isinstance(m.get("body"), str) else {})}
                      for m in obj.get("messages", []) if isinstance(m, dict)],
            client=str(obj.get("client", "127.0.0.1")), then=str(obj.get("then", "disconnect")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return AsgiInput("http", "POST", "/acMetadata/v1/pod/hmac/sign", b"", [],
                         body_messages([data]))


# --------------------------------------------------------------------------- control API

POD_UUIDS = {"quick": "0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a91",
             "sleeper": "0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a92",
             "stubborn": "0c6f1b0e-5d3a-4a53-9f3e-2f1f6d8b7a93"}
API_PATHS = ["/v1/ping", "/v1/info", "/v1/pods", "/v1/pods/{pod}", "/v1/pods/{pod}/start",
             "/v1/pods/{pod}/stop", "/v1/pods/{pod}/restart", "/v1/pods/{pod}/kill",
             "/v1/pods/{pod}/wait", "/v1/pods/{pod}/run", "/v1/shutdown", "/v1/events",
             "/v1/pods/{pod}/attach", "/v2/x", "/", "", "/v1/pods/{pod}/start/extra"]
POD_REFS = ["quick", "sleeper", "stubborn", POD_UUIDS["quick"], "0c6f", "nope", "", "%00",
            "\u00e9", "..", "a" * 300, "%2F"]
API_QUERIES = [b"", b"grace=0.01", b"grace=-1", b"grace=nan", b"grace=inf", b"grace=1e999",
               b"grace=x", b"signal=TERM", b"signal=SIGKILL", b"signal=99999", b"signal=0",
               b"signal=\xc2\xb2", b"signal=-9", b"signal=%C2%B2", b"signal=" + b"9" * 5000,
               b"rm=1", b"keep_pods=yes", b"since=0", b"since=%C2%B2",
               b"since=0001-01-01T00:00:00%2B01:00", b"since=9999-12-31T23:59:59-01:00",
               b"since=99999999999999999999999", b"since=2026-01-01T00:00:00Z",
               b"since=" + b"9" * 5000, b"since=x", b"pod=quick&type=pod.*", b"bogus=1",
               b"token=secret-token", b"app=main", b"\xff=\xff", b"since=-1"]


class ApiTarget:
    """The control API's ASGI app with its pod routes over the fake runtime (no pods, no
    namespaces), on a fresh copy of a state database holding two prepared pods; and the
    TCP listener's app (bearer token or cookie, the dashboard) in front of it."""

    name = "api"

    def __init__(self, base: Path) -> None:
        from jetpack.state import StateDB
        from jetpack.store.pods import AppRecord, PodOptions, PodRecord, PodStore

        self.base = base
        self.template = base / "template"
        self.template.mkdir()
        db = StateDB.for_root(self.template, create=True)
        with db.transaction() as tx:
            tx.execute("INSERT INTO images (id, name, labels, manifest, size, created, storage)"
                       " VALUES ('sha512-1', 'example.com/app', '{}', '{}', 1, 0, '')")
            for name, uuid in POD_UUIDS.items():
                PodStore(db).insert(tx, PodRecord(
                    uuid=uuid, name=name, state="prepared", manifest="{}",
                    options=PodOptions(), apps=[AppRecord(name, "sha512-1")]))
        db.close()
        self.runs = 0

    def strategy(self) -> st.SearchStrategy[Any]:
        path = st.tuples(st.sampled_from(API_PATHS), st.sampled_from(POD_REFS)).map(
            lambda pair: pair[0].replace("{pod}", pair[1]))
        frames = st.lists(st.sampled_from([
            {"type": "websocket.receive", "text": "{}"},
            {"type": "websocket.receive", "text": "not json"},
            {"type": "websocket.receive", "bytes": b"\x00\xff"},
            {"type": "websocket.receive", "text": '{"type": "resize", "rows": "x"}'},
            {"type": "websocket.receive"}]), max_size=3)
        websocket = st.builds(
            AsgiInput, type=st.just("websocket"), method=st.just("GET"),
            path=path | st.just("/v1/events"),
            query=st.lists(st.sampled_from(API_QUERIES), max_size=3).map(b"&".join),
            headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES),
                                       st.sampled_from(HEADER_VALUES)), max_size=2),
            messages=frames.map(lambda f: [{"type": "websocket.connect"}, *f])
            | st.just([{"type": "websocket.receive"}]),
            then=st.just("disconnect"))
        http = st.builds(
            AsgiInput, type=st.just("http"),
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "get", "\u00e9", ""]),
            path=path,
            query=st.lists(st.sampled_from(API_QUERIES), max_size=3).map(b"&".join),
            headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES),
                                       st.sampled_from(HEADER_VALUES)), max_size=2),
            messages=st.lists(st.sampled_from([b"", b"{}", b"[", b"[" * 5000, b"\xff",
                                               b"null"]) | st.binary(max_size=20),
                              max_size=2).map(body_messages)
            | st.just([{"type": "http.request", "body": b"x" * ((1 << 20) + 1)}])
            | st.just([{"type": "http.disconnect"}]),
            then=st.just("disconnect"))
        return st.tuples(http | websocket, st.booleans())

    def check_bytes(self, data: bytes) -> None:
        self.check((decode_asgi(data), False))

    def check(self, value: tuple[AsgiInput, bool]) -> None:
        request, on_listener = value
        with memory_bounded():
            sent = self.answer(request, on_listener=on_listener)
        if request.type == "http":
            check_http_answer(sent, json_errors=True)
        else:
            check_websocket_answer(sent)

    def answer(self, request: AsgiInput, *, on_listener: bool = False) -> list[dict[str, Any]]:
        """What the app sends for ``request`` on a fresh copy of the state (pods ``sleeper``
        and ``stubborn`` running, ``quick`` prepared)."""
        self.runs += 1
        root = self.base / f"run{self.runs}"
        shutil.copytree(self.template, root)
        try:
            return trio.run(self._answer, root, request, on_listener)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    async def _answer(self, root: Path, request: AsgiInput, on_listener: bool
                      ) -> list[dict[str, Any]]:
        from jetpack.state import StateDB
        from jetpack.supervisor.api import ControlApp, core_router
        from jetpack.supervisor.control import add_pod_routes
        from jetpack.supervisor.dashboard import Dashboard
        from jetpack.supervisor.events import EventHub
        from jetpack.supervisor.listener import Authenticated
        from jetpack.supervisor.pods import PodManager
        from jetpack.testing.fake_runtime import Behaviour, FakeRuntime

        config = load_config(None, [f"root.path={root}", "storage.driver=dir",
                                    "pod.stop-timeout=10ms"], environ={})
        db = await trio.to_thread.run_sync(StateDB.for_root, root)
        runtime = FakeRuntime({"quick": [Behaviour(runs_for=0.01)],
                               "stubborn": [Behaviour(ignores_sigterm=True)]})
        # waiting for a pod that runs until stopped is a legitimate hang
        waits = request.path.endswith(("/wait", "/run")) and any(
            ref in request.path for ref in ("sleeper", "stubborn", POD_UUIDS["sleeper"],
                                            POD_UUIDS["stubborn"]))
        sent: list[dict[str, Any]] = []
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                hub = await nursery.start(EventHub(db.path, poll_interval=0.05).run)
                manager = await nursery.start(PodManager(config, db, runtime,
                                                         notify=hub.notify).run)
                await manager.start("sleeper")
                await manager.start("stubborn")
                router = core_router(hub)
                add_pod_routes(router, manager, lambda keep: None)
                control = ControlApp(router, hub, heartbeat_interval=0.05)
                # on_listener: the TCP listener's app (token, cookie, dashboard) around it
                app: Any = (Authenticated(Dashboard(control), "secret-token", secure=False)
                            if on_listener else control)
                try:
                    sent = await drive(app, request, limit=0.5 if waits else 10)
                except TooSlow as exc:
                    if not waits:
                        failure = exc
                except Exception as exc:  # noqa: BLE001  # reported below, outside the nursery
                    failure = exc
                manager.detach()
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(db.close)
        if failure is not None:
            raise failure
        return sent


# --------------------------------------------------------------------------- registry


def make_targets(base: Path) -> dict[str, Any]:
    """Every target, its files under ``base`` (a fresh temporary directory)."""
    (base / "aci").mkdir()
    (base / "config").mkdir()
    (base / "api").mkdir()
    return {"aci": AciTarget(base / "aci"), "manifest": ManifestTarget(),
            "config": ConfigTarget(base / "config"), "discovery": DiscoveryTarget(),
            "mds": MdsTarget(), "api": ApiTarget(base / "api")}


def temporary_base() -> Path:
    """A short directory (unix sockets of the event hub live under it)."""
    return Path(tempfile.mkdtemp(prefix="jpfz", dir="/tmp"))
