"""Start-to-exit of /bin/true in a busybox rootfs: jetpack's runtime API vs runc vs bare unshare.

Not a test. Run as root:  PYTHONPATH=. python bench/runtime_bench.py [-n RUNS]
Prints the median of each and its ratio to the floor (unshare + chroot, no setup at all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from jetpack.stage1.base import AppSpec, SandboxSpec
from jetpack.stage1.linux import LinuxDriver


def make_rootfs(path: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, path / "bin/busybox")
    for applet in ("true", "sh"):
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    return path


def timed(runs: int, once: Callable[[], object]) -> list[float]:
    once()  # warm caches
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        results.append(time.perf_counter() - start)
    return results


def floor_once(rootfs: Path) -> Callable[[], None]:
    """One run of the floor: /bin/true in fresh namespaces by unshare(1) + chroot(1)."""
    argv = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net",
            "chroot", str(rootfs), "/bin/true"]

    def once() -> None:
        subprocess.run(argv, check=True)

    return once


def bench_floor(rootfs: Path, runs: int) -> list[float]:
    return timed(runs, floor_once(rootfs))


def runc_once(rootfs: Path, bundle: Path) -> Callable[[], None]:
    """One ``runc run`` of /bin/true on ``rootfs`` (its bundle made in ``bundle``)."""
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"] = {"path": str(rootfs), "readonly": False}
    (bundle / "config.json").write_text(json.dumps(config))

    def once() -> None:
        name = f"jpbench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["runc", "run", "--bundle", str(bundle), name], check=True,
                       stdin=subprocess.DEVNULL)

    return once


def bench_runc(rootfs: Path, bundle: Path, runs: int) -> list[float]:
    return timed(runs, runc_once(rootfs, bundle))


def bench_jetpack(rootfs: Path, pod_dir: Path, runs: int) -> tuple[list[float], list[float]]:
    """(start_app + wait in a live pod, a whole pod: create + start + wait + destroy)."""
    driver = LinuxDriver()
    app = AppSpec(name="true", rootfs=rootfs, exec=("/bin/true",))

    async def app_runs() -> list[float]:
        handle = await driver.create_sandbox(SandboxSpec(str(uuid.uuid4()), "bench", pod_dir))
        try:
            results = []
            for _ in range(runs + 1):
                start = time.perf_counter()
                process = await driver.start_app(handle, app)
                status = await driver.wait(handle, process)
                results.append(time.perf_counter() - start)
                process.close()
                assert status.code == 0, status
            return results[1:]
        finally:
            await driver.destroy_sandbox(handle)

    async def pod_runs() -> list[float]:
        results = []
        for i in range(runs + 1):
            start = time.perf_counter()
            handle = await driver.create_sandbox(
                SandboxSpec(str(uuid.uuid4()), "bench", pod_dir.with_name(f"pod{i}")))
            process = await driver.start_app(handle, app)
            await driver.wait(handle, process)
            process.close()
            await driver.destroy_sandbox(handle)
            results.append(time.perf_counter() - start)
        return results[1:]

    return trio.run(app_runs), trio.run(pod_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jpbench-") as tmp:
        base = Path(tmp)
        rootfs = make_rootfs(base / "rootfs")
        rows = {
            "unshare+chroot (floor)": bench_floor(rootfs, args.runs),
            "runc run": bench_runc(rootfs, base / "bundle", args.runs),
        }
        app_times, pod_times = bench_jetpack(rootfs, base / "pod", args.runs)
        rows["jetpack start_app+wait"] = app_times
        rows["jetpack whole pod"] = pod_times
    floor = statistics.median(rows["unshare+chroot (floor)"])
    runc = statistics.median(rows["runc run"])
    print(f"{'runs':<26}{args.runs}")
    print(f"{'':<26}{'median ms':>10}{'x floor':>9}{'x runc':>8}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<26}{median * 1000:>10.1f}{median / floor:>9.2f}{median / runc:>8.2f}")


if __name__ == "__main__":
    main()
