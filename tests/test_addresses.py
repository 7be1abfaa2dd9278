"""Pod address allocation: lowest free, never the host's, never twice, even under concurrency."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from jetpack.errors import NetworkError
from jetpack.state import StateDB
from jetpack.store.addresses import allocate_address, host_ipv4_addresses

from conftest import REPO


def insert_pod(db: StateDB, n: int, ip: str) -> None:
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO pods (uuid, name, state, manifest, ip, created)"
            " VALUES (?, ?, 'prepared', '{}', ?, 0)", (f"u{n}", f"p{n}", ip)
        )


def test_lowest_free_skipping_host_and_taken(tmp_path: Path) -> None:
    db = StateDB.for_root(tmp_path, create=True)
    with db.transaction() as tx:
        assert allocate_address(tx, "172.23.0.1/16") == "172.23.0.2"
    insert_pod(db, 1, "172.23.0.2")
    on_host = [ipaddress.IPv4Address("172.23.0.3")]
    with db.transaction() as tx:
        assert allocate_address(tx, "172.23.0.1/16", on_host) == "172.23.0.4"
    with db.transaction() as tx:  # the host keeps an address in the middle of the range
        assert allocate_address(tx, "10.99.0.5/29") == "10.99.0.1"


def test_exhaustion_is_a_clear_error(tmp_path: Path) -> None:
    db = StateDB.for_root(tmp_path, create=True)
    insert_pod(db, 1, "10.99.0.2")
    with db.transaction() as tx, pytest.raises(NetworkError, match="no free pod address"):
        allocate_address(tx, "10.99.0.1/30")


def test_host_addresses_include_loopback() -> None:
    addresses = host_ipv4_addresses()
    assert ipaddress.IPv4Address("127.0.0.1") in addresses
    ip_out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True)
    assert ip_out.returncode == 0, ip_out.stderr
    lines = ip_out.stdout.splitlines()
    assert {ipaddress.IPv4Interface(line.split()[3]).ip for line in lines} == addresses


PREPARER = """
import sys
from pathlib import Path
from jetpack.state import StateDB
from jetpack.store.addresses import allocate_address
db = StateDB.for_root(Path(sys.argv[1]))
n = sys.argv[2]
with db.transaction() as tx:
    ip = allocate_address(tx, "172.23.0.1/16")
    tx.execute("INSERT INTO pods (uuid, name, state, manifest, ip, created)"
               " VALUES (?, ?, 'prepared', '{}', ?, 0)", ("u" + n, "p" + n, ip))
print(ip)
"""


def test_twenty_concurrent_allocations_are_distinct(tmp_path: Path) -> None:
    StateDB.for_root(tmp_path, create=True).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", PREPARER, str(tmp_path), str(n)],
                         stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO)})
        for n in range(20)
    ]
    outs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(outs)) == 20
    assert sorted(outs, key=ipaddress.IPv4Address) == [f"172.23.0.{i}" for i in range(2, 22)]
