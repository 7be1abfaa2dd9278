"""The soak: N pod cycles of every kind against one real supervisor, with the host's resources
counted every 100 cycles; exits non-zero if anything leaked or disagreed with the database.

Not a test (tests/test_soak.py runs a short one). Run as root:
    PYTHONPATH=. python bench/soak.py [--cycles 1000] [--every 100] [--storage dir|zfs]
A real ``jetpack daemon`` runs against a temporary state root with a private bridge and network
(tests/podhost.py's open_host); the cycles rotate through a restart policy firing (on-failure:2,
an app that exits 3), a port forward with exec and logs, empty and host volumes with exec, and
memory and cpu isolators; one ``/v1/events`` websocket follows the whole run and checks that the
sequence numbers have no gap. Each row: pods, mounts, links (veths on the bridge), nftables rules,
cgroups and pod processes still on the host, the supervisor's fds and RSS, and the number of
problems tests/inventory.py finds. Everything is removed afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# conftest before soaking: podhost and conftest import each other, and only conftest first
# completes both
# isort: off
from conftest import make_busybox_rootfs  # the test helpers (tests/ is on sys.path above)
from podhost import open_host
from soaking import Soak
# isort: on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--storage", choices=("dir", "zfs"), default="dir")
    args = parser.parse_args()
    storage = {"storage.driver": "dir"}
    if args.storage == "zfs":
        pool = os.environ.get("JETPACK_TEST_POOL") or sys.exit("zfs needs $JETPACK_TEST_POOL")
        storage = {"storage.driver": "zfs", "root.zfs": f"{pool}/soak{os.getpid()}"}
    busybox = Path("/bin/busybox")
    with tempfile.TemporaryDirectory(prefix="jp-soak-") as tmp:
        work = Path(tmp)
        rootfs = make_busybox_rootfs(busybox, work / "rootfs")
        with open_host(work, rootfs, storage) as host:
            host.start()
            soak = Soak(host, log=lambda line: print(line, flush=True))
            print(f"soak: {args.cycles} cycles, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
                  flush=True)
            follower = soak.run(args.cycles, args.every)
            found = soak.leaks(follower)
        if args.storage == "zfs":
            os.system(f"zfs destroy -R {storage['root.zfs']}")
    print(f"events followed: {follower.received} (last seq {follower.last_seq}), "
          f"gaps {len(follower.gaps)}, disconnects {follower.disconnects}")
    print(f"failed cycles: {len(soak.failures)}")
    for line in found:
        print(f"LEAK/PROBLEM: {line}")
    print("verdict:", "clean" if not found else f"{len(found)} finding(s)")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
