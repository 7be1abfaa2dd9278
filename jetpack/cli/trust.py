"""``trust``, ``untrust`` and ``fetch``: signing keys trusted per name prefix, and images
fetched by name (discovery), URL or file with their signatures checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jetpack.cli.context import Context
from jetpack.errors import UsageError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "trust":
        parser.add_argument("key", nargs="?", metavar="KEYFILE|URL",
                            help="an armored or binary public key, a file or an https URL")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--prefix", help="trust the key for names under this prefix")
        scope.add_argument("--root", action="store_true", help="trust the key for every name")
        parser.add_argument("--discover", action="store_true",
                            help="find the keys of --prefix by discovery")
        parser.add_argument("--list", action="store_true", help="list trusted keys")
        parser.add_argument("--json", action="store_true", help="with --list: a JSON array")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        parser.add_argument("--insecure", default=None,
                            help="none|http|image|all (default: images.insecure)")
    elif name == "untrust":
        parser.add_argument("fingerprint", metavar="FINGERPRINT")
    elif name == "fetch":
        parser.add_argument("image", metavar="NAME[,LABEL=VALUE...]|URL|FILE")
        parser.add_argument("--insecure", default=None,
                            help="none|http|image|all (default: images.insecure)")
        parser.add_argument("--pull", default="new", choices=["never", "new", "update"],
                            help="fetch only when missing (new), always (update), or never")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    from jetpack import trust

    if name == "untrust":
        for key in trust.remove_key(ctx.config, args.fingerprint):
            print(f"removed {key.fingerprint} ({key.prefix or 'root'})")
        return 0
    if name == "fetch":
        return _fetch(ctx, args)
    if args.list:
        keys = trust.list_keys(ctx.config)
        if args.json:
            ctx.print_json([{"fingerprint": k.fingerprint, "uids": list(k.uids),
                             "prefix": k.prefix} for k in keys])
        else:
            ctx.print_table(("PREFIX", "FINGERPRINT", "UID"),
                            [(k.prefix or "(root)", k.fingerprint, ", ".join(k.uids))
                             for k in keys])
        return 0
    if not args.root and not args.prefix:
        raise UsageError("trust needs --prefix PREFIX or --root")
    for data, origin in _key_sources(ctx, args):
        found = trust.inspect_key(data)
        for fingerprint, uids in found:
            print(f"key {fingerprint} {', '.join(uids)} from {origin}")
        scope = "every image" if args.root else f"images under {args.prefix}"
        if not args.yes and not _confirm(f"trust it for {scope}? [y/N] "):
            print("not trusted", file=sys.stderr)
            return 1
        for key in trust.add_key(ctx.config, data, None if args.root else args.prefix):
            print(f"trusted {key.fingerprint} for {key.prefix or 'every image'}")
    return 0


def _confirm(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _key_sources(ctx: Context, args: argparse.Namespace) -> list[tuple[bytes, str]]:
    import trio

    from jetpack.discovery import Discovery, client
    from jetpack.fetch import Insecure

    insecure = Insecure.parse(args.insecure or ctx.config["images.insecure"])
    if args.discover:
        if not args.prefix:
            raise UsageError("--discover needs --prefix NAME")
        if args.key:
            raise UsageError("give a key or --discover, not both")

        async def discover() -> list[tuple[bytes, str]]:
            async with client() as http:
                urls = await Discovery(http, insecure_http=insecure.http).pubkeys(args.prefix)
                return [(await _get(http, url, insecure_http=insecure.http), url)
                        for url in urls]

        return trio.run(discover)
    if not args.key:
        raise UsageError("trust needs a KEYFILE or URL, or --discover")
    if args.key.startswith(("https://", "http://")):
        if args.key.startswith("http://") and not insecure.http:
            raise UsageError(f"{args.key}: plain http is refused", hint="--insecure=http")

        async def one() -> list[tuple[bytes, str]]:
            async with client() as http:
                return [(await _get(http, args.key, insecure_http=insecure.http), args.key)]

        return trio.run(one)
    try:
        return [(Path(args.key).read_bytes(), args.key)]
    except OSError as exc:
        raise UsageError(f"cannot read {args.key}: {exc.strerror}") from None


async def _get(http: object, url: str, *, insecure_http: bool) -> bytes:
    import httpx

    from jetpack.discovery import open_url, read_bounded
    from jetpack.errors import FetchError

    assert isinstance(http, httpx.AsyncClient)
    try:
        async with open_url(http, url, insecure_http=insecure_http) as response:
            if response.status_code >= 400:
                raise FetchError(f"{url}: HTTP {response.status_code}")
            return await read_bounded(response)
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None


def _fetch(ctx: Context, args: argparse.Namespace) -> int:
    import trio

    from jetpack.fetch import Fetcher, Insecure
    from jetpack.store.images import ImageStore

    insecure = Insecure.parse(args.insecure or ctx.config["images.insecure"])
    fetcher = Fetcher(ctx.config, ImageStore(ctx.config, ctx.state), insecure=insecure)
    record = trio.run(fetcher.fetch, args.image, args.pull)
    print(record.id)
    return 0
