"""Runs every benchmark in bench/ with small sizes and prints one table of ratios to baselines.

Not a test. Run as root:  PYTHONPATH=. python bench/run_all.py [--full]
Each benchmark runs as its own process (its table is echoed as it finishes); the summary keeps
the lines that compare jetpack with a standard tool. --full uses each script's default sizes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

SMALL: dict[str, list[str]] = {
    "runtime_bench.py": ["-n", "5"],
    "import_bench.py": ["--mib", "64"],
    "mds_bench.py": ["--seconds", "2"],
    "events_bench.py": ["--subscribers", "20", "--seconds", "1", "--rates", "100", "300"],
    "supervisor_bench.py": ["-n", "5", "--real-pods", "20", "--fake-pods", "100"],
}
NUMBER = r"(-?[\d.]+|nan)"
ROW = re.compile(rf"^(\S.*?)\s{{2,}}{NUMBER}\s+{NUMBER}\s+{NUMBER}(?:\s+{NUMBER})?\s*$")


def run(script: str, args: list[str]) -> tuple[str, float, int]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    elapsed = time.monotonic() - start
    output = done.stdout
    if done.returncode != 0:
        output += f"\n[exit {done.returncode}]\n" + "\n".join(done.stderr.splitlines()[-15:])
    return output, elapsed, done.returncode


def summarize(script: str, output: str) -> list[tuple[str, str, str]]:
    """(measurement, value, ratio) rows worth comparing across runs."""
    rows = []
    for line in output.splitlines():
        found = ROW.match(line)
        if script in ("runtime_bench.py", "supervisor_bench.py") and found \
                and found.group(5) is None:  # the latency table, not the memory one
            name, median, x_floor, x_runc = found.group(1, 2, 3, 4)
            rows.append((name, f"{median} ms", f"{x_floor} x floor, {x_runc} x runc"))
        elif script == "supervisor_bench.py" and found and found.group(5) is not None:
            name, pods, rss, per_pod = found.group(1, 2, 3, 4)
            rows.append((f"{name}, {pods} pods", f"{rss} MiB RSS", f"{per_pod} KiB/pod"))
        elif script == "import_bench.py" and found:
            name, _seconds, rate, x_tar = found.group(1, 2, 3, 4)
            rows.append((name, f"{rate} MiB/s", f"{x_tar} x tar pipeline time"))
        elif script == "mds_bench.py" and found:
            name, rate, p50, p99 = found.group(1, 2, 3, 4)
            rows.append((name, f"{rate} req/s", f"p50 {p50} ms, p99 {p99} ms"))
        elif script == "events_bench.py" and line.startswith(("in-process", "other-process",
                                                               "idle")):
            cells = [*re.split(r"\s{2,}", line.strip()), "", "", ""]
            if cells[0] == "idle subscribers":
                rows.append((f"{cells[1]} idle subscribers", cells[2], ""))
            else:
                rows.append((cells[0], cells[2], cells[3]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each benchmark's default sizes")
    parser.add_argument("only", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    summary: list[tuple[str, str, str, str]] = []
    failed = []
    for script, small in SMALL.items():
        if args.only and script not in args.only and script.removesuffix(".py") not in args.only:
            continue
        output, elapsed, code = run(script, [] if args.full else small)
        print(f"=== {script} {' '.join([] if args.full else small)} ({elapsed:.0f} s)")
        print(output.rstrip(), flush=True)
        if code != 0:
            failed.append(script)
        summary += [(script.removesuffix(".py"), *row) for row in summarize(script, output)]
    print("\n=== summary")
    headers = ("benchmark", "measurement", "value", "ratio / detail")
    widths = [max(len(r[i]) for r in [headers, *summary]) for i in range(4)]
    for row in [headers, *summary]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
