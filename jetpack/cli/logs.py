"""``logs POD[:APP] [-f]``: an app's output from its size-bounded log file.

Each app's stdout and stderr go straight to ``<root>/pods/<uuid>/logs/<app>.log`` (rotated once
to ``.log.1``), never through the supervisor, so output survives a supervisor restart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import BinaryIO

from jetpack.cli.context import Context
from jetpack.config import Config
from jetpack.store.pods import PodRecord, PodStore

FOLLOW_POLL = 0.1


def log_path(config: Config, pod_uuid: str, app: str) -> Path:
    return config.root / "pods" / pod_uuid / "logs" / f"{app}.log"


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("target", metavar="POD[:APP]", help="the pod, and one of its apps")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new output until the pod stops")


def split_target(store: PodStore, target: str) -> tuple[PodRecord, list[str]]:
    ref, _, app = target.partition(":")
    pod = store.resolve(ref)
    if app:
        pod.app(app)  # raises NotFoundError naming the pod's apps
        return pod, [app]
    return pod, [a.name for a in pod.apps]


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    del name
    store = PodStore(ctx.state)
    pod, apps = split_target(store, args.target)
    out = sys.stdout.buffer
    prefix = len(apps) > 1
    offsets: dict[str, int] = {}
    for app in apps:
        path = log_path(ctx.config, pod.uuid, app)
        rotated = path.with_name(path.name + ".1")
        for part in (rotated, path):
            if part.exists():
                _copy(part, 0, out, app if prefix else None)
        offsets[app] = path.stat().st_size if path.exists() else 0
    out.flush()
    if not args.follow:
        return 0
    while True:
        for app in apps:
            path = log_path(ctx.config, pod.uuid, app)
            size = path.stat().st_size if path.exists() else 0
            if size < offsets[app]:  # rotated: the new file starts over
                offsets[app] = 0
            if size > offsets[app]:
                offsets[app] = _copy(path, offsets[app], out, app if prefix else None)
        out.flush()
        if store.get(pod.uuid).state not in ("starting", "running", "stopping"):
            return 0
        time.sleep(FOLLOW_POLL)


def _copy(path: Path, offset: int, out: BinaryIO, prefix: str | None) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    if prefix is None:
        out.write(data)
    else:
        for line in data.splitlines(keepends=True):
            out.write(f"{prefix}| ".encode() + line)
    return offset + len(data)
