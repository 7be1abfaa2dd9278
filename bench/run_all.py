"""Every benchmark in bench/, one after the other, with small sizes: one command for the whole
table (each script prints its own section with its ratios).

Not a test. Run as root:  PYTHONPATH=. python bench/run_all.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ("import: jetpack import vs tar -x | tee sha512sum", ["import_bench.py", "--size", "50",
                                                          "-n", "2"]),
    ("runtime: start to exit of /bin/true vs runc and unshare+chroot",
     ["runtime_bench.py", "-n", "10"]),
    ("supervisor: start via API and run --rm vs runc and the floor; memory",
     ["supervisor_bench.py", "-n", "5", "--pods", "0,100,500"]),
    ("metadata service: 50 clients", ["mds_bench.py", "--seconds", "5"]),
    ("events: subscribers on loopback", ["events_bench.py"]),
]


def main() -> int:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    failed = 0
    for title, argv in RUNS:
        print(f"\n== {title}", flush=True)
        result = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], env=env,
                                check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
