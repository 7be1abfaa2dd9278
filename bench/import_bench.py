"""Import throughput of ``jetpack import`` against the floor: ``tar -x`` fed the decompressed
stream, with ``tee`` sending the same bytes through ``sha512sum`` (what import does in one pass).

Not a test. Run as root from the repository:  python bench/import_bench.py [--size MB] [-n RUNS]
[--compress gzip|bzip2|xz|none] [--zfs DATASET]. Prints the median time of each way, its
throughput in MB/s of decompressed tar, and the ratio of jetpack's throughput to the floor's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DECOMPRESS = {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc", "none": "cat"}

WORDS = ["container", "pod", "image", "manifest", "rootfs", "jail", "dataset", "snapshot",
         "clone", "supervisor", "restart", "network", "address", "volume", "isolator"]
# Mostly small files, a few large ones (about 200 KB on average): a userland's shape.
SIZES = [1_000] * 8 + [4_000] * 8 + [16_000] * 4 + [64_000] * 3 + [256_000] * 2 + \
    [1_000_000, 4_000_000]


def make_rootfs(rootfs: Path, size_mb: int, seed: int = 1) -> int:
    """Half random (incompressible) and half text-like (compressible) files from 1 KB to 4 MB
    in 37 directories, with a symlink to every tenth."""
    rng = random.Random(seed)
    target = size_mb * 1_000_000
    written = 0
    n = 0
    while written < target:
        sub = rootfs / f"usr/lib/d{n % 37}"
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.choice(SIZES)
        if n % 2:
            data = os.urandom(size)
        else:
            line = " ".join(rng.choice(WORDS) for _ in range(12)).encode() + b"\n"
            data = (line * (size // len(line) + 1))[:size]
        (sub / f"f{n}").write_bytes(data)
        if n % 10 == 0:
            (sub / f"l{n}").symlink_to(f"f{n}")
        written += size
        n += 1
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return n


def make_aci(work: Path, size_mb: int, compress: str) -> tuple[Path, int]:
    build = work / "build"
    rootfs = build / "rootfs"
    rootfs.mkdir(parents=True)
    files = make_rootfs(rootfs, size_mb)
    (build / "manifest").write_text(
        '{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/bench"}')
    tar = work / "bench.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(tar), "-C", str(build), "manifest",
                    "rootfs"], check=True)
    shutil.rmtree(build)
    if compress == "none":
        return tar, files
    aci = work / f"bench.aci.{compress}"
    with aci.open("wb") as out:
        subprocess.run([compress, "-c", str(tar)], stdout=out, check=True)
    tar.unlink()
    return aci, files


def timed(runs: int, setup: Callable[[int], None], once: Callable[[int], None],
          cleanup: Callable[[int], None]) -> list[float]:
    times = []
    for i in range(runs + 1):  # the first run warms the page cache and is not counted
        setup(i)
        start = time.perf_counter()
        once(i)
        elapsed = time.perf_counter() - start
        cleanup(i)
        if i:
            times.append(elapsed)
    return times


def floor_way(aci: Path, work: Path, compress: str) -> Callable[[int], None]:
    def once(i: int) -> None:
        dest = work / f"floor{i}"
        dest.mkdir()
        script = (f"set -o pipefail; {DECOMPRESS[compress]} {aci} | "
                  f"tee >(sha512sum > {work}/floor{i}.sum) | tar -x -C {dest} -f -")
        subprocess.run(["bash", "-c", script], check=True)
    return once


def jetpack_way(aci: Path, work: Path, zfs: str | None) -> tuple[
        Callable[[int], None], Callable[[int], None], Callable[[int], None]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def conf(i: int) -> Path:
        return work / f"jp{i}.conf"

    def cli(i: int, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "jetpack.cli.main", "-c", str(conf(i)),
                              *args], env=env, check=True, capture_output=True, text=True)
        return out.stdout

    def setup(i: int) -> None:
        lines = [f"root.path = {work / f'jp{i}'}"]
        lines += [f"storage.driver = zfs\nroot.zfs = {zfs}-{os.getpid()}-{i}"] if zfs \
            else ["storage.driver = dir"]
        conf(i).write_text("\n".join(lines) + "\n")
        cli(i, "init")

    def once(i: int) -> None:
        cli(i, "import", str(aci))

    def cleanup(i: int) -> None:
        if zfs:
            sys.path.insert(0, str(REPO))
            from jetpack.storage.zfs import ZfsCommand

            ZfsCommand().destroy(f"{zfs}-{os.getpid()}-{i}")  # retried while zfs-fuse is busy
        shutil.rmtree(work / f"jp{i}", ignore_errors=True)

    return setup, once, cleanup


def main() -> int:
    parser = argparse.ArgumentParser(description="jetpack import vs tar -x | tee sha512sum")
    parser.add_argument("--size", type=int, default=200, help="rootfs size in MB (200)")
    parser.add_argument("-n", "--runs", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument("--compress", default="gzip", choices=sorted(DECOMPRESS))
    parser.add_argument("--zfs", metavar="DATASET",
                        help="also import on the zfs driver into DATASET-<pid>-<run>")
    parser.add_argument("--dir", default="/var/tmp", help="where to work (same disk for all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="jetpack-import-bench.", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"building a {args.size} MB rootfs and its {args.compress} ACI ...", flush=True)
        aci, files = make_aci(work, args.size, args.compress)
        aci_mb = aci.stat().st_size / 1e6
        decompressed = int(subprocess.run(
            ["bash", "-c", f"{DECOMPRESS[args.compress]} {aci} | wc -c"],
            capture_output=True, text=True, check=True).stdout)
        digest = hashlib.sha512()
        with subprocess.Popen(["bash", "-c", f"{DECOMPRESS[args.compress]} {aci}"],
                              stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                digest.update(chunk)

        def nothing(i: int) -> None:
            del i

        def remove_floor(i: int) -> None:
            shutil.rmtree(work / f"floor{i}", ignore_errors=True)

        results: dict[str, list[float]] = {}
        results["tar -x | tee sha512sum"] = timed(
            args.runs, nothing, floor_way(aci, work, args.compress), remove_floor)
        results["jetpack import (dir)"] = timed(args.runs, *jetpack_way(aci, work, None))
        if args.zfs:
            results["jetpack import (zfs)"] = timed(args.runs, *jetpack_way(aci, work, args.zfs))

    mb = decompressed / 1e6
    print(f"\nACI: {aci_mb:.0f} MB {args.compress}, "
          f"{mb:.0f} MB of tar, {files} files; median of {args.runs} runs "
          f"(sha512-{digest.hexdigest()[:12]}...)\n")
    floor = statistics.median(results["tar -x | tee sha512sum"])
    print(f"{'way':<26} {'median s':>9} {'MB/s':>8} {'throughput vs floor':>20}")
    for way, times in results.items():
        median = statistics.median(times)
        print(f"{way:<26} {median:>9.2f} {mb / median:>8.1f} {floor / median:>19.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
