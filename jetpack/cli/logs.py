"""``logs POD[:APP] [-f] [--tail N] [--since DURATION|TIME] [--timestamps]``: an app's output
from its size-bounded log file.

Each app's stdout and stderr go straight to ``<root>/pods/<uuid>/logs/<app>.log`` (rotated once
to ``.log.1``), never through the supervisor, so output survives a supervisor restart. Beside
each, ``<app>.log.times`` (written by the app's monitor, stage2's ``RotatingLog``) says when its
bytes were written: that is what ``--timestamps`` prints and ``--since`` filters on. A line
written before that index existed has no time (``-``; ``--since`` leaves it out).
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jetpack.cli.context import Context
from jetpack.config import Config
from jetpack.errors import UsageError
from jetpack.store.pods import PodRecord, PodStore

FOLLOW_POLL = 0.1
TIMES_SUFFIX = ".times"  # jetpack.stage2.executor.TIMES_SUFFIX (a test keeps them equal)


def log_path(config: Config, pod_uuid: str, app: str) -> Path:
    return config.root / "pods" / pod_uuid / "logs" / f"{app}.log"


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("target", metavar="POD[:APP]", help="the pod, and one of its apps")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new output until the pod stops")
    parser.add_argument("-n", "--tail", type=_count, metavar="N",
                        help="start with the last N lines (of each app)")
    parser.add_argument("--since", type=parse_since, metavar="DURATION|TIME",
                        help="only lines written since: a duration ago (10s, 5m, 2h, 1d) or an "
                             "RFC 3339 time (UTC unless it has an offset)")
    parser.add_argument("-t", "--timestamps", action="store_true",
                        help="prefix each line with when it was written (RFC 3339, UTC)")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--tail {text}: expected a number of lines")
    return int(text)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time of ``--since``: a duration before now, or an RFC 3339 time."""
    from jetpack.config import parse_duration

    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text}: expected a duration (10s, 5m, 2h) or an RFC 3339 time "
            "(2026-11-29T10:00:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def split_target(store: PodStore, target: str) -> tuple[PodRecord, list[str]]:
    ref, _, app = target.partition(":")
    pod = store.resolve(ref)
    if app:
        pod.app(app)  # raises NotFoundError naming the pod's apps
        return pod, [app]
    return pod, [a.name for a in pod.apps]


def read_times(path: Path, start: int = 0) -> tuple[list[tuple[int, float]], int]:
    """The ``(offset, unix time)`` marks of a log's times file from byte ``start`` on (whole
    lines only), and where the next read starts."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    end = data.rfind(b"\n") + 1
    marks = []
    for line in data[:end].splitlines():
        offset, _, stamp = line.partition(b" ")
        try:
            marks.append((int(offset), float(stamp)))
        except ValueError:
            continue  # a torn line: the writer's partial write after a crash
    return marks, start + end


@dataclass
class Reader:
    """One app's log: its lines with their times, read incrementally (for ``-f``)."""

    path: Path
    offset: int = 0  # bytes of the current file already read
    times_offset: int = 0
    marks: list[tuple[int, float]] = field(default_factory=list)
    partial: bytes = b""  # the unfinished last line
    partial_at: int = 0

    def lines(self, part: Path | None = None) -> list[tuple[float | None, bytes]]:
        """New complete lines of the current file (or all of ``part``, a rotated file)."""
        if part is not None:
            marks, _ = read_times(part.with_name(part.name + TIMES_SUFFIX))
            data = _read(part, 0)
            return _timed_lines(data, 0, marks, final=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < self.offset:  # rotated: the new file starts over
            self.offset = self.times_offset = 0
            self.marks = []
            self.partial = b""
        new, self.times_offset = read_times(self.path.with_name(self.path.name + TIMES_SUFFIX),
                                            self.times_offset)
        self.marks += new
        if size == self.offset:
            return []
        data = _read(self.path, self.offset)
        start = self.offset - len(self.partial)
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return _timed_lines(data[:cut], start, self.marks, final=False)

    def rest(self) -> list[tuple[float | None, bytes]]:
        """The unfinished last line, when the output ends without a newline."""
        if not self.partial:
            return []
        line, self.partial = self.partial, b""
        return _timed_lines(line, self.offset - len(line), self.marks, final=True)


def _read(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _timed_lines(data: bytes, start: int, marks: list[tuple[int, float]], *, final: bool
                 ) -> list[tuple[float | None, bytes]]:
    """``data`` (at byte ``start`` of its file) cut into lines, each with the time of the
    last mark at or before its first byte."""
    offsets = [m[0] for m in marks]
    out: list[tuple[float | None, bytes]] = []
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            if not final:
                break
            end = len(data) - 1
        at = bisect.bisect_right(offsets, start + position) - 1
        out.append((marks[at][1] if at >= 0 else None, data[position:end + 1]))
        position = end + 1
    return out


def run(ctx: Context, name: str, args: argparse.Namespace) -> int:
    del name
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail needs a number of lines (0 or more)")
    store = PodStore(ctx.state)
    pod, apps = split_target(store, args.target)
    out = sys.stdout.buffer
    prefix = len(apps) > 1
    readers = {app: Reader(log_path(ctx.config, pod.uuid, app)) for app in apps}
    for app, reader in readers.items():
        rotated = reader.path.with_name(reader.path.name + ".1")
        lines = reader.lines(rotated) + reader.lines()
        unfinished = reader.rest() if reader.partial else []
        lines = [line for line in lines + unfinished if _wanted(line[0], args.since)]
        if args.tail is not None:
            lines = list(deque(lines, maxlen=args.tail))
        if args.follow and unfinished:
            # following: the unfinished last line is printed once it is whole (or the pod
            # stops), in one piece with one prefix
            if lines and lines[-1] is unfinished[0]:
                lines.pop()
            reader.partial = unfinished[0][1]
        _write(out, lines, app if prefix else None, timestamps=args.timestamps)
    out.flush()
    if not args.follow:
        return 0
    while True:
        running = store.get(pod.uuid).state in ("starting", "running", "stopping")
        for app, reader in readers.items():
            lines = reader.lines() + ([] if running else reader.rest())
            _write(out, [line for line in lines if _wanted(line[0], args.since)],
                   app if prefix else None, timestamps=args.timestamps)
        out.flush()
        if not running:
            return 0
        time.sleep(FOLLOW_POLL)


def _wanted(stamp: float | None, since: float | None) -> bool:
    # in whole microseconds: a time printed by --timestamps, given back, includes its line
    return since is None or (stamp is not None and round(stamp * 1e6) >= round(since * 1e6))


def _write(out: BinaryIO, lines: list[tuple[float | None, bytes]], prefix: str | None, *,
           timestamps: bool) -> None:
    for stamp, line in lines:
        if timestamps:
            out.write(f"{_rfc3339(stamp)} ".encode())
        if prefix is not None:
            out.write(f"{prefix}| ".encode())
        out.write(line)


def _rfc3339(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
