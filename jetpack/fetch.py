"""``jetpack fetch``: an image by name (discovery), URL or file, with its detached signature
verified against the keys trusted for the image's name before it is imported.

Downloads go to the state root's tmp area, streamed, and are removed whatever happens; a
refused or failed fetch imports nothing. ``--pull``: ``never`` (only the store), ``new`` (fetch
when the store has no match; the default), ``update`` (always fetch).
"""

from __future__ import annotations

import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from jetpack.appc import ImageManifest
from jetpack.config import Config
from jetpack.discovery import Discovery, client
from jetpack.errors import FetchError, ImageError, JetpackError, NotFoundError, UsageError
from jetpack.hostinfo import appc_arch, appc_os
from jetpack.store.images import ImageRecord, ImageStore, Progress
from jetpack.store.refs import parse_name_labels as parse_reference
from jetpack.trust import verify_detached

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


def manifest_name(aci: Path) -> str:
    """The image name in an ACI's manifest, read from the archive stream."""
    try:
        with tarfile.open(aci, "r|*") as tar:
            for member in tar:
                if member.name.lstrip("./") == "manifest" and member.isreg():
                    data = tar.extractfile(member)
                    return ImageManifest.from_json(data.read() if data else b"").name
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"{aci.name} is not a readable ACI: {exc}") from None
    raise ImageError(f"{aci.name} has no manifest")


async def download(http: httpx.AsyncClient, url: str, target: Path) -> None:
    """Stream ``url`` into ``target``; an HTTP error, a dropped connection or a short body
    is a FetchError naming the URL."""
    try:
        async with http.stream("GET", url, follow_redirects=True) as response:
            if response.status_code >= 400:
                raise FetchError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            expected = response.headers.get("content-length")
            progress = Progress(f"fetch {url.rsplit('/', 1)[-1]}",
                                int(expected) if expected and expected.isdigit() else None)
            received = 0
            with target.open("wb") as out:
                async for chunk in response.aiter_raw():
                    await trio.to_thread.run_sync(out.write, chunk)
                    received += len(chunk)
                    progress(received)
            progress.done()
            if expected is not None and expected.isdigit() and received != int(expected):
                raise FetchError(f"{url}: truncated download ({received} of {expected} bytes)")
    except httpx.HTTPError as exc:
        cause = str(exc) or type(exc).__name__
        raise FetchError(f"{url}: {type(exc).__name__}: {cause}") from None


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
                await download(http, aci_url, aci)
                if not self.insecure.image:
                    await download(http, asc_url, asc)
            if expected is not None:
                name = await trio.to_thread.run_sync(manifest_name, aci)
                if name != expected:
                    raise ImageError(f"{aci_url} holds image {name}, not {expected}")
            return await self._import(aci, asc, aci_url)
        finally:
            aci.unlink(missing_ok=True)
            asc.unlink(missing_ok=True)

    async def _import(self, aci: Path, asc: Path, source: str) -> ImageRecord:
        def work() -> ImageRecord:
            if not self.insecure.image:
                verify_detached(self.config, manifest_name(aci), aci, asc)
            return self.store.import_aci(aci, source_name=source)

        try:
            return await trio.to_thread.run_sync(work)
        except JetpackError:
            raise
