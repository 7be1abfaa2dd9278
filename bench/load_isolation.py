"""Load isolation: pod start latency through the control API, unloaded and while pods hammer
the metadata service (both share the supervisor's trio loop), and the ratio (target <= 1.5x).

Not a test. Run as root:  PYTHONPATH=. python bench/load_isolation.py [-n 15] [--clients 50]
    [--hammer-pods 5] [--storage dir|zfs]
A real ``jetpack daemon`` (tests/podhost.py's open_host: temporary state root, private bridge
and network). Latency: a prepared ``/bin/true`` pod, ``POST /v1/pods/{pod}/start`` then
``GET /v1/pods/{pod}/wait``, median of ``-n`` (pods prepared beforehand, not timed). Load:
``--hammer-pods`` pods share ``--clients`` client loops against ``$AC_METADATA_URL``, each a
busybox ``wget`` fetching ``GET pod/uuid`` 50 times per process. Also printed: the MDS requests
answered per second and the supervisor's CPU share while loaded. ``--client-cpu 100m`` puts
each hammering pod under a resource/cpu limit. Everything is removed afterwards, also on
failure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from acis import aci_from_entries, dir_entry, manifest, manifest_entry
from conftest import make_busybox_rootfs  # the test helpers (tests/ is on sys.path above)
from podhost import Host, open_host

IMAGE = "example.com/busybox"
TARGET = 1.5

# `clients` loops in one pod, each a busybox wget fetching BATCH URLs per process (one fork per
# BATCH requests, so the load lands on the supervisor rather than on fork); a line per batch.
BATCH = 50
HAMMER = r"""
url="$AC_METADATA_URL/acMetadata/v1/pod/uuid"; urls=""
i=0; while [ $i -lt BATCH ]; do urls="$urls $url"; i=$((i+1)); done
i=0
while [ $i -lt CLIENTS ]; do
  (while true; do wget -q -O /dev/null $urls && echo batch; done) &
  i=$((i+1))
done
echo hammering
wait
"""


def start_latencies(host: Host, pods: list[str]) -> list[float]:
    import httpx

    transport = httpx.HTTPTransport(uds=str(host.tmp / "jp.sock"))
    found = []
    with httpx.Client(transport=transport, base_url="http://jetpack", timeout=120) as http:
        http.get("/v1/ping").raise_for_status()
        for pod in pods:
            begun = time.perf_counter()
            http.post(f"/v1/pods/{pod}/start").raise_for_status()
            http.get(f"/v1/pods/{pod}/wait").raise_for_status()
            found.append(time.perf_counter() - begun)
    return found


def mds_answers(host: Host) -> dict[str, float]:
    """``jetpack_mds_requests_total`` by status code, from the supervisor's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    transport = httpx.HTTPTransport(uds=str(host.tmp / "jp.sock"))
    with httpx.Client(transport=transport, base_url="http://jetpack", timeout=30) as http:
        text = http.get("/metrics").raise_for_status().text
    return {sample.labels["code"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "jetpack_mds_requests"
            for sample in family.samples if sample.name == "jetpack_mds_requests_total"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=15)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--hammer-pods", type=int, default=5)
    parser.add_argument("--client-cpu", default="",
                        help="a resource/cpu limit for each hammering pod (e.g. 100m)")
    args = parser.parse_args()
    per_pod = -(-args.clients // args.hammer_pods)
    with tempfile.TemporaryDirectory(prefix="jp-load-") as tmp:
        work = Path(tmp)
        rootfs = make_busybox_rootfs(Path("/bin/busybox"), work / "rootfs")
        with open_host(work, rootfs, {"storage.driver": "dir"}) as host:
            host.start()
            assert host.daemon is not None
            prepare = lambda: host.jp("prepare", IMAGE, "--exec",  # noqa: E731  # local helper
                                      "/bin/true").stdout.split()[-1]
            quiet_pods = [prepare() for _ in range(args.n + 1)]
            loaded_pods = [prepare() for _ in range(args.n + 1)]
            after_pods = [prepare() for _ in range(args.n + 1)]
            quiet = start_latencies(host, quiet_pods)[1:]  # the first warms the loop's paths
            image = IMAGE
            if args.client_cpu:
                image = "example.com/hammer"
                host.jp("import", str(aci_from_entries(work / "hammer.aci", [
                    manifest_entry(manifest(image, dependencies=[{"imageName": IMAGE}], app={
                        "exec": ["/bin/true"], "user": "0", "group": "0",
                        "isolators": [{"name": "resource/cpu",
                                       "value": {"limit": args.client_cpu}}]})),
                    dir_entry("rootfs")])))
            script = HAMMER.replace("CLIENTS", str(per_pod)).replace("BATCH", str(BATCH))
            hammers = [host.jp("prepare", image, "--exec", "/bin/sh -c '{}'".format(
                script.replace("'", "'\\''"))).stdout.split()[-1]
                for _ in range(args.hammer_pods)]
            for pod in hammers:
                host.jp("start", pod)
            host.wait_for("the hammers", lambda: all(
                "hammering" in host.jp("logs", pod).stdout for pod in hammers), timeout=60)
            time.sleep(2)  # every loop busy
            answers0 = mds_answers(host)
            cpu0, wall0 = cpu_seconds(host.daemon.pid), time.monotonic()
            loaded = start_latencies(host, loaded_pods)[1:]
            cpu_share = (cpu_seconds(host.daemon.pid) - cpu0) / (time.monotonic() - wall0)
            elapsed = time.monotonic() - wall0
            answers = {code: count - answers0.get(code, 0)
                       for code, count in mds_answers(host).items()}
            for pod in hammers:
                host.jp("stop", pod)
            # unloaded again: the machine's own drift between the phases (it is shared)
            again = start_latencies(host, after_pods)[1:]
    base, under = statistics.median(quiet), statistics.median(loaded)
    ratio = under / base
    print(f"pod start latency (POST start + GET wait, /bin/true), median of {args.n}")
    print(f"{'condition':<52} {'median ms':>9} {'p90 ms':>7}")
    print(f"{'unloaded':<52} {base * 1000:>9.1f} "
          f"{statistics.quantiles(quiet, n=10)[-1] * 1000:>7.1f}")
    label = f"{args.clients} MDS clients in {args.hammer_pods} pods" + (
        f" (cpu {args.client_cpu} each)" if args.client_cpu else "")
    print(f"{label:<52} {under * 1000:>9.1f} "
          f"{statistics.quantiles(loaded, n=10)[-1] * 1000:>7.1f}")
    print(f"{'unloaded again, after the load':<52} {statistics.median(again) * 1000:>9.1f} "
          f"{statistics.quantiles(again, n=10)[-1] * 1000:>7.1f}")
    print(f"ratio loaded/unloaded: {ratio:.2f} (target <= {TARGET}): "
          f"{'meets' if ratio <= TARGET else 'misses'}")
    rates = ", ".join(f"{code}: {count / elapsed:.0f}/s" for code, count in sorted(answers.items())
                      if count)
    print(f"while loaded: MDS answers {rates or 'none'} (the per-pod budget answers 429 past "
          f"it), supervisor CPU {cpu_share * 100:.0f}% of one core")
    sys.exit(0 if ratio <= TARGET else 1)


if __name__ == "__main__":
    main()
