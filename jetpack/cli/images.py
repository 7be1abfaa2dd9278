"""Image commands: ``import``, ``images``, ``show-image``/``image-manifest``, ``destroy-image``,
``export``, ``tag``, ``untag`` and ``gc``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jetpack.cli.context import Context


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "import":
        parser.add_argument("file", metavar="FILE|-", help="the ACI (- reads stdin)")
        parser.add_argument("--sig", metavar="FILE.asc", help="check this detached signature")
        parser.add_argument("--name", help="expect this image name (refuse another)")
    elif name == "images":
        parser.add_argument("--json", action="store_true", help="print a JSON array")
        parser.add_argument("-q", "--quiet", action="store_true", help="print only IDs")
    elif name in ("show-image", "image-manifest"):
        parser.add_argument("image", metavar="IMAGE")
    elif name == "destroy-image":
        parser.add_argument("images", nargs="+", metavar="IMAGE")
        parser.add_argument("--force", action="store_true",
                            help="remove even when pods use it")
    elif name == "export":
        parser.add_argument("image", metavar="IMAGE")
        parser.add_argument("file", metavar="FILE|-", help="where to write (- for stdout)")
        parser.add_argument("--flat", action="store_true",
                            help="render dependencies into one ACI")
    elif name == "tag":
        parser.add_argument("image", metavar="IMAGE")
        parser.add_argument("tag", metavar="NAME@TAG")
    elif name == "untag":
        parser.add_argument("tag", metavar="NAME@TAG")
    elif name == "gc":
        parser.add_argument("--images", action="store_true",
                            help="also remove images that no pod uses")
        parser.add_argument("--grace", default="30m",
                            help="remove pods exited longer ago than this (default 30m)")
        parser.add_argument("--network", action="store_true",
                            help="also remove the pod bridge and firewall table when unused")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    from jetpack.store.images import ImageStore

    store = ImageStore(ctx.config, ctx.state)
    if name == "import":
        sig = Path(args.sig) if args.sig else None
        source = sys.stdin.buffer if args.file == "-" else Path(args.file)
        record = store.import_aci(source, sig=sig, expect_name=args.name)
        print(record.id)
        return 0
    if name == "images":
        records = store.all()
        if args.json:
            tags = store.tags()
            ctx.print_json([dict(r.to_json_obj(), tags=tags.get(r.id, [])) for r in records])
        elif args.quiet:
            for record in records:
                print(record.id)
        else:
            rows = []
            tags = store.tags()
            for r in records:
                labels = ",".join(f"{k}={v}" for k, v in r.labels.items() if k != "version")
                rows.append((r.id[:19], r.name, r.version or "-", labels or "-",
                             _size(r.size), r.to_json_obj()["created"][:19],
                             " ".join(tags.get(r.id, [])) or "-"))
            ctx.print_table(("ID", "NAME", "VERSION", "LABELS", "SIZE", "CREATED", "TAGS"),
                            rows)
        return 0
    if name in ("show-image", "image-manifest"):
        record = store.resolve(args.image)
        if name == "image-manifest":
            print(json.dumps(json.loads(record.manifest), indent=2))
        else:
            ctx.print_json(dict(record.to_json_obj(), manifest=json.loads(record.manifest),
                                tags=store.tags().get(record.id, [])))
        return 0
    if name == "destroy-image":
        for ref in args.images:
            record = store.destroy(ref, force=args.force)
            print(f"removed {record.id}")
        return 0
    if name == "export":
        if args.file == "-":
            return _export_stdout(ctx, store, args.image, flat=args.flat)
        record = store.export(args.image, Path(args.file), flat=args.flat)
        print(record.id)
        return 0
    if name == "tag":
        store.tag(args.image, args.tag)
        return 0
    if name == "untag":
        store.untag(args.tag)
        return 0
    return _gc(ctx, store, args)


def _export_stdout(ctx: Context, store: object, ref: str, *, flat: bool) -> int:
    """``export IMAGE -``: the ACI on stdout (as ``import -`` reads stdin), nothing else there.
    Written first to a private file in the state root (the export's own atomic path), then
    copied out, so a failed export writes nothing."""
    import shutil
    import tempfile

    from jetpack.store.images import ImageStore

    assert isinstance(store, ImageStore)
    if sys.stdout.isatty():
        from jetpack.errors import UsageError

        raise UsageError("refusing to write an ACI to a terminal",
                         hint="redirect stdout to a file or a pipe")
    with tempfile.TemporaryDirectory(prefix=".export-", dir=ctx.config.root) as tmp:
        out = Path(tmp) / "image.aci"
        store.export(ref, out, flat=flat)
        with out.open("rb") as aci:
            sys.stdout.flush()
            shutil.copyfileobj(aci, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return 0


def _gc(ctx: Context, store: object, args: argparse.Namespace) -> int:
    from jetpack.config import parse_duration
    from jetpack.events import Retention, trim_events
    from jetpack.store.images import ImageStore
    from jetpack.store.lifecycle import gc_pods

    assert isinstance(store, ImageStore)
    for line in gc_pods(ctx.config, ctx.state, store, parse_duration(args.grace)):
        print(line)
    for line in store.gc(images=args.images):
        print(f"removed {line}")
    trimmed = trim_events(ctx.state, Retention.from_config(ctx.config))
    if trimmed:
        print(f"trimmed {trimmed} events")
    if args.network:
        from jetpack.store.lifecycle import gc_network

        for line in gc_network(ctx.config, ctx.state):
            print(line)
    return 0


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}TB"
