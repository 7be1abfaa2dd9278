"""The supervisor end to end: pod start latency through the control API, ``jetpack run --rm``
end to end, each against ``runc run`` on the same rootfs and the unshare+chroot floor; and the
supervisor's memory with idle pods.

Not a test. Run as root:  PYTHONPATH=. python bench/supervisor_bench.py [-n RUNS] [--pods 100,500]

- "start via API": POST /v1/pods/{pod}/start answered (every app running) — request to exec.
- "run --rm": the CLI process, from prepare to exit status and removal, an app /bin/true.
- memory: RSS of a supervisor holding N idle pods. Real pods cost a helper process each
  outside the supervisor; to count the supervisor alone, the pods run under the scriptable
  fake runtime in-process (same PodManager, event hub, database and API), which is stated in
  the output.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import bench_floor, bench_runc, make_rootfs

REPO = Path(__file__).resolve().parent.parent


def cli(conf: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "jetpack.cli.main", "-c", str(conf), *args],
                         capture_output=True, text=True, check=False,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        raise SystemExit(f"jetpack {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def make_aci(base: Path, rootfs: Path) -> Path:
    build = base / "build"
    build.mkdir()
    (build / "manifest").write_text(json.dumps({
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "bench.example/true",
        "app": {"exec": ["/bin/true"], "user": "0", "group": "0"}}))
    aci = base / "true.aci"
    subprocess.run(["tar", "-czf", str(aci), "-C", str(build), "manifest", "-C",
                    str(rootfs.parent), rootfs.name], check=True)
    return aci


def bench_api(base: Path, rootfs: Path, runs: int) -> tuple[list[float], list[float]]:
    tag = secrets.token_hex(2)
    sock = base / "jp.sock"
    conf = base / "jetpack.conf"
    conf.write_text(f"root.path = {base / 'root'}\nsupervisor.socket = {sock}\n"
                    f"jail.interface = jpb{tag}\njail.network = 172.30.{int(tag[:2], 16)}.1/24\n")
    cli(conf, "init")
    cli(conf, "import", str(make_aci(base, rootfs)))
    daemon = subprocess.Popen([sys.executable, "-m", "jetpack.cli.main", "-c", str(conf),
                               "daemon"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not sock.exists():
            time.sleep(0.05)
        starts = []
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://jetpack", timeout=60) as api:
            for _ in range(runs + 1):
                pod = cli(conf, "prepare", "bench.example/true").split()[-1]
                began = time.perf_counter()
                api.post(f"/v1/pods/{pod}/start").raise_for_status()
                starts.append(time.perf_counter() - began)
                api.get(f"/v1/pods/{pod}/wait").raise_for_status()
                cli(conf, "destroy", pod)
        runs_rm = []
        for _ in range(runs + 1):
            began = time.perf_counter()
            cli(conf, "run", "--rm", "bench.example/true")
            runs_rm.append(time.perf_counter() - began)
        return starts[1:], runs_rm[1:]
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        cli(conf, "gc", "--network")


def bench_memory(counts: list[int]) -> list[tuple[int, float]]:
    """RSS (MiB) of a supervisor process holding N idle pods (fake runtime, in a child)."""
    results = []
    for count in counts:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(count)],
                             capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        rss = [line for line in out.stdout.splitlines() if line.startswith("RSS_MIB ")]
        results.append((count, float(rss[-1].split()[1])))
    return results


def memory_child(count: int) -> None:
    import trio

    from jetpack.config import load_config
    from jetpack.keys import ensure_keys
    from jetpack.state import StateDB
    from jetpack.store.pods import AppRecord, PodRecord, PodStore, new_uuid
    from jetpack.supervisor.daemon import Daemon
    from jetpack.testing.fake_runtime import FakeRuntime

    with tempfile.TemporaryDirectory(prefix="jpmem-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        db = StateDB.for_root(root, create=True)
        config = load_config(None, [f"root.path={root}", f"supervisor.socket={tmp}/s.sock"],
                             environ={})
        ensure_keys(config)
        with db.transaction() as tx:
            tx.execute("INSERT INTO images (id, name, labels, manifest, size, created, storage)"
                       " VALUES ('sha512-1', 'x', '{}', '{}', 1, 0, '')")
            for i in range(count):
                PodStore(db).insert(tx, PodRecord(new_uuid(), f"p{i}", "prepared", "{}",
                                                  apps=[AppRecord("app", "sha512-1")]))
        db.close()

        async def main() -> None:
            daemon = Daemon(config, FakeRuntime(), mds_bind=["127.0.0.1:0"])
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                assert daemon.manager is not None
                for i in range(count):
                    await daemon.manager.start(f"p{i}")
                await trio.sleep(1)
                status = await trio.Path("/proc/self/status").read_text()
                rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
                print(f"RSS_MIB {int(rss.split()[1]) / 1024}", flush=True)
                daemon.request_stop()

        trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=10)
    parser.add_argument("--pods", default="0,100,500")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    with tempfile.TemporaryDirectory(prefix="jpsup-") as tmp:
        base = Path(tmp)
        rootfs = make_rootfs(base / "rootfs")
        floor = statistics.median(bench_floor(rootfs, args.runs))
        runc = statistics.median(bench_runc(rootfs, base / "bundle", args.runs))
        starts, run_rm = bench_api(base, rootfs, args.runs)
    print(f"{'':<30}{'median ms':>10}{'x floor':>9}{'x runc':>8}")
    for name, median in (("unshare+chroot (floor)", floor), ("runc run", runc),
                         ("start via API", statistics.median(starts)),
                         ("jetpack run --rm", statistics.median(run_rm))):
        print(f"{name:<30}{median * 1000:>10.1f}{median / floor:>9.2f}{median / runc:>8.2f}")
    print("\nsupervisor RSS with N idle pods (fake runtime in-process, see the docstring)")
    for count, mib in bench_memory([int(c) for c in args.pods.split(",")]):
        print(f"{count:>6} pods  {mib:8.1f} MiB")


if __name__ == "__main__":
    main()
