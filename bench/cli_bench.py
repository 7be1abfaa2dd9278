"""The CLI's own overhead (issue 18): ``jetpack list`` and ``jetpack status`` against the bare
interpreter with the modules they need (``python -c 'import sqlite3, json'``), optionally
beside another tree (``--before``: a checkout or ``git archive`` of the commit to compare),
all interleaved in one run. Wall-clock medians, and the processes' own CPU time (user+sys,
which a loaded machine disturbs less). Not a test.

    PYTHONPATH=. python bench/cli_bench.py --conf /path/jetpack.conf [--before /tmp/base] [-n 30]

The configuration's supervisor should be running (``status`` then asks it, as in
fastpath_bench); ``run`` adds ``jetpack run --rm IMAGE --exec /bin/true`` rows, and
``--runc ROOTFS`` a ``runc run`` row of ``/bin/true`` on ROOTFS (issue 18's baseline for ``run``;
runtime_bench.make_rootfs makes one) with each run row's ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True, help="jetpack.conf of a state root")
    parser.add_argument("--before", help="another tree to compare (PYTHONPATH for its rows)")
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--run", metavar="IMAGE", help="also time run --rm IMAGE /bin/true")
    parser.add_argument("--runc", metavar="ROOTFS", help="also time runc run /bin/true on ROOTFS")
    args = parser.parse_args()
    trees = {"after": str(REPO)}
    if args.before:
        trees = {"before": args.before, **trees}
    rows: dict[str, tuple[list[str], str]] = {
        "python -c 'import sqlite3, json'": ([sys.executable, "-c", "import sqlite3, json"],
                                             str(REPO))}
    commands = [["list"], ["status"]]
    if args.run:
        commands.append(["run", "--rm", args.run, "--exec", "/bin/true"])
    if args.runc:
        bundle = Path(tempfile.mkdtemp(prefix="jpclibench-"))
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/true"]
        config["root"] = {"path": str(Path(args.runc).resolve()), "readonly": False}
        (bundle / "config.json").write_text(json.dumps(config))
        rows["runc run"] = (["runc", "run", "--bundle", str(bundle), "{name}"], str(REPO))
    for command in commands:
        for label, tree in trees.items():
            name = f"jetpack {command[0]}" + (f" ({label})" if args.before else "")
            rows[name] = ([sys.executable, "-m", "jetpack.cli.main", "-c", args.conf, *command],
                          tree)
    wall: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(args.runs + 2):  # two warm-up rounds
        for name, (template, tree) in rows.items():
            env = dict(os.environ, PYTHONPATH=tree)
            argv = [f"jpclibench-{uuid.uuid4().hex[:8]}" if a == "{name}" else a
                    for a in template]
            used, start = children_cpu(), time.perf_counter()
            # cwd: ``python -m`` puts it first on sys.path, ahead of PYTHONPATH
            subprocess.run(argv, stdin=subprocess.DEVNULL, env=env, cwd=tree,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            if i >= 2:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(children_cpu() - used)
    if args.runc:
        shutil.rmtree(bundle)
    base = next(iter(rows))
    wall_base, cpu_base = statistics.median(wall[base]), statistics.median(cpu[base])
    print(f"medians of {args.runs}, interleaved; PYTHONDONTWRITEBYTECODE="
          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    print(f"  {'':<44}{'wall':>9} {'ratio':>6}  {'cpu':>9} {'ratio':>6}")
    for name in rows:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:<44}{w * 1000:7.1f}ms {w / wall_base:5.2f}x  {c * 1000:7.1f}ms "
              f"{c / cpu_base:5.2f}x")
    if "runc run" in rows:
        runc = statistics.median(wall["runc run"])
        for name in rows:
            if name.startswith("jetpack run"):
                print(f"  {name}: {statistics.median(wall[name]) / runc:.2f}x runc run (wall)")


if __name__ == "__main__":
    main()
