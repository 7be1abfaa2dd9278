"""``jetpack fetch``: an image by name (discovery), URL or file, with its detached signature
verified against the keys trusted for the image's name before it is imported.

The signature is checked over the raw bytes of one open file before a byte is decompressed,
and that same open file is then imported: nothing of an unverified archive is read, and no
path is opened twice (a file swapped after the check is not the one imported). Fetched by name,
only keys trusted for that name count; by URL or file, the name is not known before the
archive is read, so any trusted key counts and the manifest's name must then be one that key is
trusted for. Downloads go to the state root's tmp area, streamed, bounded by images.max-size,
and are removed whatever happens; a refused or failed fetch imports nothing. ``--pull``:
``never`` (only the store), ``new`` (fetch when the store has no match; the default),
``update`` (always fetch).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
import trio

from jetpack.config import Config
from jetpack.discovery import MAX_PAGE, Discovery, client, open_url
from jetpack.errors import FetchError, ImageError, NotFoundError, UsageError
from jetpack.hostinfo import appc_arch, appc_os
from jetpack.store.images import ImageRecord, ImageStore, Progress
from jetpack.store.refs import parse_name_labels as parse_reference
from jetpack.trust import verify_stream

PULL_POLICIES = ("never", "new", "update")
INSECURE = ("none", "http", "image", "all")


@dataclass(frozen=True)
class Insecure:
    http: bool
    image: bool

    @classmethod
    def parse(cls, text: str) -> Insecure:
        parts = {p.strip() for p in text.split(",") if p.strip()} or {"none"}
        if not parts <= set(INSECURE):
            raise UsageError(f"--insecure {text}: expected none, http, image or all")
        return cls(http=bool(parts & {"http", "all"}), image=bool(parts & {"image", "all"}))


async def download(http: httpx.AsyncClient, url: str, target: Path, *, insecure_http: bool,
                   limit: int) -> None:
    """Stream ``url`` into ``target``; an HTTP error, a dropped connection, a short body, a
    body over ``limit`` bytes or a refused redirect is a FetchError naming the URL."""
    try:
        async with open_url(http, url, insecure_http=insecure_http) as response:
            if response.status_code >= 400:
                raise FetchError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            expected = response.headers.get("content-length")
            progress = Progress(f"fetch {url.rsplit('/', 1)[-1]}",
                                int(expected) if expected and expected.isdigit() else None)
            received = 0
            with target.open("wb") as out:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > limit:
                        raise FetchError(f"{url}: the download is larger than {limit} bytes, "
                                         "the limit set by images.max-size")
                    await trio.to_thread.run_sync(out.write, chunk)
                    progress(received)
            progress.done()
            if expected is not None and expected.isdigit() and received != int(expected):
                raise FetchError(f"{url}: truncated download ({received} of {expected} bytes)")
    except httpx.HTTPError as exc:
        cause = str(exc) or type(exc).__name__
        raise FetchError(f"{url}: {type(exc).__name__}: {cause}") from None


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened once for reading; a FIFO, device or directory is refused (it could
    not be read twice: once to verify, once to import)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


class Fetcher:
    def __init__(self, config: Config, store: ImageStore, *, insecure: Insecure,
                 http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.store = store
        self.insecure = insecure
        self.http = http

    async def fetch(self, ref: str, pull: str = "new") -> ImageRecord:
        if pull not in PULL_POLICIES:
            raise UsageError(f"--pull {pull}: expected never, new or update")
        path = Path(ref)
        if "://" not in ref and await trio.Path(ref).exists():
            return await self._import(path, path.with_name(path.name + ".asc"), str(path))
        if ref.startswith(("http://", "https://")):
            if ref.startswith("http://") and not self.insecure.http:
                raise FetchError(f"{ref}: plain http is refused", hint="--insecure=http")
            return await self._download_and_import(ref, ref + ".asc", None)
        name, labels = parse_reference(ref)
        if pull != "update":
            try:
                return self.store.resolve(ref)
            except NotFoundError:
                if pull == "never":
                    raise
        labels.setdefault("os", appc_os())
        labels.setdefault("arch", appc_arch())
        async with self._client() as http:
            endpoints = await Discovery(http, insecure_http=self.insecure.http).endpoints(
                name, labels)
        errors = []
        for endpoint in endpoints:
            try:
                return await self._download_and_import(endpoint.aci, endpoint.asc, name)
            except FetchError as exc:
                errors.append(str(exc))
        raise FetchError(f"no endpoint of {name} could be fetched: " + "; ".join(errors))

    def _client(self) -> httpx.AsyncClient:
        return self.http if self.http is not None else client()

    async def _download_and_import(self, aci_url: str, asc_url: str, expected: str | None
                                   ) -> ImageRecord:
        tmp = self.config.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        aci, asc = tmp / f"fetch-{token}.aci", tmp / f"fetch-{token}.aci.asc"
        try:
            async with self._client() as http:
                await download(http, aci_url, aci, insecure_http=self.insecure.http,
                               limit=self.store.limits().max_size)
                if not self.insecure.image:
                    await download(http, asc_url, asc, insecure_http=self.insecure.http,
                                   limit=MAX_PAGE)
            return await self._import(aci, asc, aci_url, expected)
        finally:
            aci.unlink(missing_ok=True)
            asc.unlink(missing_ok=True)

    async def _import(self, aci: Path, asc: Path, source: str, expected: str | None = None
                      ) -> ImageRecord:
        """Verify the open file's raw bytes, then import the same open file. Fetched by name,
        only keys trusted for that name count, and the manifest must name it."""

        def work() -> ImageRecord:
            with open_regular(aci) as handle:
                signed = None
                if not self.insecure.image:
                    signed = verify_stream(self.config, expected, handle, asc,
                                           shown_as=Path(source).name)
                handle.seek(0)
                return self.store.import_aci(handle, source_name=source, expect_name=expected,
                                             signed=signed)

        return await trio.to_thread.run_sync(work)
