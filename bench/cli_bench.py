"""The CLI's own overhead (issue 18): ``jetpack list`` and ``jetpack status`` against the bare
interpreter with the modules they need (``python -c 'import sqlite3, json'``), optionally
beside another tree (``--before``: a checkout or ``git archive`` of the commit to compare),
all interleaved in one run. Wall-clock medians, and the processes' own CPU time (user+sys,
which a loaded machine disturbs less). Not a test.

    PYTHONPATH=. python bench/cli_bench.py --conf /path/jetpack.conf [--before /tmp/base] [-n 30]

The configuration's supervisor should be running (``status`` then asks it, as in
fastpath_bench); ``run`` adds ``jetpack run --rm IMAGE --exec /bin/true`` rows.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
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
    for command in commands:
        for label, tree in trees.items():
            name = f"jetpack {command[0]}" + (f" ({label})" if args.before else "")
            rows[name] = ([sys.executable, "-m", "jetpack.cli.main", "-c", args.conf, *command],
                          tree)
    wall: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(args.runs + 2):  # two warm-up rounds
        for name, (argv, tree) in rows.items():
            env = dict(os.environ, PYTHONPATH=tree)
            used, start = children_cpu(), time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=True)
            if i >= 2:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(children_cpu() - used)
    base = next(iter(rows))
    wall_base, cpu_base = statistics.median(wall[base]), statistics.median(cpu[base])
    print(f"medians of {args.runs}, interleaved; PYTHONDONTWRITEBYTECODE="
          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    print(f"  {'':<44}{'wall':>9} {'ratio':>6}  {'cpu':>9} {'ratio':>6}")
    for name in rows:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:<44}{w * 1000:7.1f}ms {w / wall_base:5.2f}x  {c * 1000:7.1f}ms "
              f"{c / cpu_base:5.2f}x")


if __name__ == "__main__":
    main()
