"""Import throughput: ``jetpack import`` (CLI and ImageStore.import_aci in-process) vs the same
decompress + hash + extract work done by standard tools (gzip | tee >(sha512sum) | tar -x).

Not a test. Run as root:  PYTHONPATH=. python bench/import_bench.py [--mib 150]
Generates one gzip ACI (half random, half compressible files), imports it into fresh state roots
on the dir driver (and on zfs when $JETPACK_TEST_POOL names a pool: a dataset under it, destroyed
afterwards), one run each, and prints MiB/s of uncompressed tar and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_aci(work: Path, mib: int) -> tuple[Path, int]:
    """A gzip ACI of about ``mib`` MiB of files; returns (path, uncompressed tar bytes)."""
    from jetpack.hostinfo import appc_arch, appc_os

    build = work / "build"
    rootfs = build / "rootfs"
    (rootfs / "data/random").mkdir(parents=True)
    (rootfs / "data/text").mkdir(parents=True)
    chunk = 4 * 1024 * 1024
    files = max(1, mib // 8)  # half the bytes random, half compressible, 4 MiB files
    line = b"".join(b"line %06d of a compressible configuration file\n" % i for i in range(2000))
    text = (line * (chunk // len(line) + 1))[:chunk]
    for i in range(files):
        (rootfs / f"data/random/blob{i:03}").write_bytes(os.urandom(chunk))
        (rootfs / f"data/text/file{i:03}").write_bytes(text)
    for i in range(200):  # many small files too, as a real rootfs has
        (rootfs / f"data/text/small{i:03}.conf").write_bytes(text[: 1024 + 37 * i])
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/bulk",
                "labels": [{"name": "version", "value": "1.0.0"},
                           {"name": "os", "value": appc_os()},
                           {"name": "arch", "value": appc_arch()}]}
    (build / "manifest").write_text(json.dumps(manifest))
    tar = work / "bulk.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(tar), "-C", str(build),
                    "manifest", "rootfs"], check=True)
    size = tar.stat().st_size
    aci = work / "bulk.aci"
    with aci.open("wb") as out:
        subprocess.run(["gzip", "-c", str(tar)], stdout=out, check=True)
    tar.unlink()
    shutil.rmtree(build)
    return aci, size


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def baseline(aci: Path, dest: Path) -> float:
    dest.mkdir()
    script = f"gzip -dc '{aci}' | tee >(sha512sum > '{dest}.sum') | tar -x -C '{dest}'"
    elapsed = timed(lambda: subprocess.run(["bash", "-c", script], check=True))
    shutil.rmtree(dest)
    return elapsed


def write_conf(path: Path, root: Path, zfs: str | None) -> Path:
    lines = [f"root.path = {root}"]
    lines += [f"storage.driver = {'zfs' if zfs else 'dir'}"]
    if zfs:
        lines.append(f"root.zfs = {zfs}")
    path.write_text("\n".join(lines) + "\n")
    return path


def jetpack(conf: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "jetpack.cli.main", "-c", str(conf), *args],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"jetpack {' '.join(args)} failed:\n{done.stderr}")


def cli_import(work: Path, aci: Path, name: str, zfs: str | None) -> float:
    conf = write_conf(work / f"{name}.conf", work / name, zfs)
    jetpack(conf, "init")
    return timed(lambda: jetpack(conf, "import", str(aci)))


def inprocess_import(work: Path, aci: Path, name: str, zfs: str | None) -> float:
    from jetpack.config import load_config
    from jetpack.state import StateDB
    from jetpack.store.images import ImageStore

    conf = write_conf(work / f"{name}.conf", work / name, zfs)
    jetpack(conf, "init")
    config = load_config(str(conf))
    state = StateDB.for_root(config.root)
    try:
        store = ImageStore(config, state)
        return timed(lambda: store.import_aci(aci))
    finally:
        state.close()


def destroy_dataset(name: str) -> None:
    for _ in range(20):
        subprocess.run(["zfs", "destroy", "-R", name], capture_output=True, check=False)
        if subprocess.run(["zfs", "list", name], capture_output=True,
                          check=False).returncode != 0:
            return
        time.sleep(0.5)
    print(f"warning: could not destroy {name}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=150, help="approximate ACI content size")
    parser.add_argument("--no-cli", action="store_true", help="only the in-process import")
    args = parser.parse_args()
    pool = os.environ.get("JETPACK_TEST_POOL")
    rows: list[tuple[str, float]] = []
    datasets: list[str] = []
    # /var/tmp rather than /tmp: same disk as a real state root, not a tmpfs
    with tempfile.TemporaryDirectory(prefix="jpimpb-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        try:
            aci, tar_bytes = make_aci(work, args.mib)
            subprocess.run(["cat", str(aci)], stdout=subprocess.DEVNULL, check=True)  # warm
            rows.append(("gzip|tee>(sha512sum)|tar -x", baseline(aci, work / "extract")))
            drivers: list[tuple[str, str | None]] = [("dir", None)]
            if pool:
                drivers.append(("zfs", pool))
            for driver, zpool in drivers:
                ds = None
                if zpool:
                    ds = f"{zpool}/bench-{uuid.uuid4().hex[:8]}"
                    datasets.append(ds)
                rows.append((f"ImageStore.import_aci ({driver})",
                             inprocess_import(work, aci, f"inproc-{driver}", ds)))
                if not args.no_cli:
                    ds2 = None
                    if zpool:
                        ds2 = f"{zpool}/bench-{uuid.uuid4().hex[:8]}"
                        datasets.append(ds2)
                    rows.append((f"jetpack import ({driver})",
                                 cli_import(work, aci, f"cli-{driver}", ds2)))
            aci_mib = aci.stat().st_size / 2**20
        finally:
            for ds in datasets:
                destroy_dataset(ds)
    floor = rows[0][1]
    mib = tar_bytes / 2**20
    print(f"ACI: {aci_mib:.0f} MiB gzip, {mib:.0f} MiB tar; one run each")
    print(f"{'':<34}{'seconds':>9}{'MiB/s':>8}{'x tar':>7}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>9.2f}{mib / seconds:>8.1f}{seconds / floor:>7.2f}")


if __name__ == "__main__":
    main()
