"""appc meta discovery (spec/discovery.md): where an image named ``example.com/app`` and its
signing keys can be downloaded from, read from ``<meta name="ac-discovery">`` and
``<meta name="ac-discovery-pubkeys">`` tags at ``https://{name}?ac-discovery=1``, walking up
the name's parent paths until a page has them.

HTTP goes through one httpx.AsyncClient (a transport seam: tests give a MockTransport);
failures become FetchError naming the URL and the cause. Redirects are followed here, not by
httpx, so that none leads from https to plain http unless ``--insecure=http`` allows it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx

from jetpack.errors import FetchError

_VARIABLE = re.compile(r"\{([^{}]*)\}")
MAX_REDIRECTS = 10
MAX_PAGE = 1 << 20  # a discovery page, a signature or a public key


def check_redirect(source: str, target: str, *, insecure_http: bool) -> None:
    """Refuse a redirect to anything but https, or plain http when ``insecure_http``."""
    scheme = httpx.URL(target).scheme
    if scheme == "http" and not insecure_http:
        raise FetchError(f"{source} redirects to {target}: a redirect from https to plain "
                         "http is refused", hint="--insecure=http allows plain http")
    if scheme not in ("http", "https"):
        raise FetchError(f"{source} redirects to {target}: not an http(s) URL")


@asynccontextmanager
async def open_url(http: httpx.AsyncClient, url: str, *, insecure_http: bool,
                   headers: dict[str, str] | None = None) -> AsyncIterator[httpx.Response]:
    """GET ``url``, following redirects under ``check_redirect``; the response streams (read
    it inside the block). ``headers`` go only to the first URL's origin, as httpx does."""
    origin = httpx.URL(url).copy_with(path="/", query=None, fragment=None)
    for _ in range(MAX_REDIRECTS + 1):
        same_origin = httpx.URL(url).copy_with(path="/", query=None, fragment=None) == origin
        request = http.build_request("GET", url, headers=headers if same_origin else None)
        try:
            response = await http.send(request, stream=True)
        except httpx.InvalidURL as exc:
            # httpx prepares the next request of a redirect even when it does not follow it:
            # a Location it cannot parse escaped as InvalidURL (found by fuzzing)
            raise FetchError(f"{url} redirects to a location that is not a valid URL: {exc}"
                             ) from None
        try:
            if not response.has_redirect_location:
                yield response
                return
            target = str(response.url.join(response.headers["location"]))
        finally:
            await response.aclose()
        check_redirect(url, target, insecure_http=insecure_http)
        url = target
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


async def read_bounded(response: httpx.Response, limit: int = MAX_PAGE) -> bytes:
    """The body of a streamed response, refused past ``limit`` bytes."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise FetchError(f"{response.url}: the response is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Endpoint:
    aci: str
    asc: str


class _MetaTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() != "meta":
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        name = values.get("name", "")
        if name in ("ac-discovery", "ac-discovery-pubkeys"):
            self.tags.append((name, values.get("content", "")))


def meta_tags(html: str) -> list[tuple[str, str, str]]:
    """(kind, prefix, template or url) for each discovery tag, in document order."""
    parser = _MetaTags()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001  # html.parser on hostile input: treat as no tags
        return []
    found = []
    for kind, content in parser.tags:
        parts = content.split()
        if len(parts) == 2:
            found.append((kind, parts[0], parts[1]))
    return found


def covers(prefix: str, name: str) -> bool:
    """A prefix covers a name on whole path segments (``example.com/foo`` covers
    ``example.com/foo/bar``, never ``example.com/foobar``)."""
    prefix = prefix.rstrip("/")
    return name == prefix or name.startswith(prefix + "/")


def render_template(template: str, name: str, labels: dict[str, str], ext: str) -> str | None:
    """The template with {name}, {ext} and labels filled; None if a variable stays unfilled."""
    values = {k: v for k, v in labels.items() if k != "name"}
    values.setdefault("version", "latest")
    values.update(name=name, ext=ext)
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        key = match.group(1)
        if key not in values:
            missing = True
            return match.group(0)
        return values[key]

    rendered = _VARIABLE.sub(fill, template)
    return None if missing else rendered


def _candidates(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


@dataclass
class Discovery:
    """Discovers endpoints and keys; ``insecure_http`` allows plain http after https fails."""

    client: httpx.AsyncClient
    insecure_http: bool = False
    host_headers: dict[str, dict[str, list[str]]] | None = None

    async def _page(self, path: str) -> str | None:
        host = path.split("/", 1)[0]
        headers: dict[str, str] = {}
        for key, values in ((self.host_headers or {}).get(host) or {}).items():
            headers[key] = ", ".join(values)
        schemes = ["https", "http"] if self.insecure_http else ["https"]
        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{path}?ac-discovery=1"
            try:
                async with open_url(self.client, url, insecure_http=self.insecure_http,
                                    headers=headers) as response:
                    if response.status_code >= 400:
                        return None  # walk up
                    body = await read_bounded(response)
                    return body.decode(response.encoding or "utf-8", errors="replace")
            except httpx.HTTPError as exc:
                last = exc
                continue
        if last is not None and path.count("/") == 0:
            raise FetchError(f"discovery of {path}: {type(last).__name__}: {last}")
        return None

    async def _walk(self, name: str, kind: str) -> list[tuple[str, str]]:
        pages: dict[str, str | None] = {}
        for path in _candidates(name):
            if path not in pages:
                pages[path] = await self._page(path)
            html = pages[path]
            if html is None:
                continue
            found = [(prefix, value) for k, prefix, value in meta_tags(html)
                     if k == kind and covers(prefix, name)]
            if found:
                return found
        return []

    async def endpoints(self, name: str, labels: dict[str, str]) -> list[Endpoint]:
        found = []
        for _, template in await self._walk(name, "ac-discovery"):
            aci = render_template(template, name, labels, "aci")
            asc = render_template(template, name, labels, "aci.asc")
            if aci is not None and asc is not None:
                found.append(Endpoint(aci, asc))
        if not found:
            raise FetchError(f"discovery found no ACI endpoint for {name} {labels or ''}".strip(),
                             hint="is the name right? --insecure=http allows plain http")
        return found

    async def pubkeys(self, name: str) -> list[str]:
        found = [url for _, url in await self._walk(name, "ac-discovery-pubkeys")]
        if not found:
            raise FetchError(f"discovery found no public keys for {name}")
        return found


def client(**kwargs: Any) -> httpx.AsyncClient:
    """The HTTP client discovery and fetch use (system CA bundle, $SSL_CERT_FILE honoured)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), **kwargs)
