"""``jetpack build``: a new image from a parent and a build command, or (``--from-dir``) a base
image from a directory; no supervisor needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from jetpack.cli.context import Context
from jetpack.errors import UsageError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.usage = ("jetpack build PARENT BUILD_DIR COMMAND [ARG...]\n"
                    "       jetpack build --from-dir ROOTFS_DIR MANIFEST.json")
    parser.add_argument("--from-dir", metavar="ROOTFS_DIR",
                        help="make a base image (no parent) from this directory")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="...",
                        help="PARENT BUILD_DIR COMMAND..., or MANIFEST.json with --from-dir")


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    from jetpack.store.build import Builder

    builder = Builder(ctx.config, ctx.state)
    if args.from_dir is not None:
        if len(args.words) != 1:
            raise UsageError("jetpack build --from-dir ROOTFS_DIR MANIFEST.json: "
                             "give exactly one manifest template")
        record = builder.from_dir(Path(args.from_dir), Path(args.words[0]))
    else:
        if len(args.words) < 3:
            raise UsageError("jetpack build PARENT BUILD_DIR COMMAND...: "
                             "a parent, a build directory and a command are needed")
        parent, build_dir, *command = args.words
        record = builder.build(parent, Path(build_dir), command)
    print(record.id)
    return 0
