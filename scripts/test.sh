#!/usr/bin/env bash
# The test suite, from a fresh Debian machine, as root: installs the system packages and the
# project (in .venv), starts zfs-fuse when it is not running, makes a file-backed pool of its own,
# runs ruff, mypy and pytest, and stops/destroys what it started (by pid and by name).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (namespaces, mounts and zfs-fuse need it)" >&2
    exit 1
fi

packages=(zfs-fuse busybox-static gnupg nftables iproute2 runc util-linux file procps
          libnftables1 python3-venv python3-dev kmod libseccomp2 curl xz-utils bzip2 gzip tar make
          dash systemd ruby vagrant bmake gcc libc6-dev mandoc zsh
          chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# compat: the checkout as a plain path in a .pth file. The default editable mode installs an
# import hook that every interpreter start of the venv imports (pathlib, re, fnmatch: ~6 ms
# of each CLI call, which the benchmarks would count as ours).
if ! .venv/bin/python -m pip install -q -e '.[test,dev]' --config-settings editable_mode=compat \
        >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    exit 1
fi

# --- zfs-fuse: start it unless running; after a killed daemon, lazily unmount stale mounts ---
started_zfs_pid=""
workdir=$(mktemp -d /var/tmp/jetpack-test.XXXXXX)
pool="jptest$$"
cleanup() {
    set +e
    if zpool list -H "$pool" >/dev/null 2>&1; then
        for _ in 1 2 3 4 5; do zpool destroy -f "$pool" 2>/dev/null && break; sleep 1; done
    fi
    rm -rf "$workdir"
    if [ -n "$started_zfs_pid" ]; then
        kill "$started_zfs_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$started_zfs_pid" 2>/dev/null || break; sleep 0.1; done
    fi
}
trap cleanup EXIT

if ! pgrep -x zfs-fuse >/dev/null; then
    awk '$3 == "fuse.zfs" {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || mknod -m 666 /dev/fuse c 10 229
    rm -f /var/run/zfs-fuse.pid /var/lock/zfs/zfs_lock
    zfs-fuse --no-kstat-mount -p "$workdir/zfs-fuse.pid"
    for _ in $(seq 100); do [ -s "$workdir/zfs-fuse.pid" ] && break; sleep 0.1; done
    started_zfs_pid=$(cat "$workdir/zfs-fuse.pid")
    for _ in $(seq 100); do zpool list >/dev/null 2>&1 && break; sleep 0.1; done
fi
# Pools that a killed earlier run left behind (their files are gone or orphaned).
for stale in $(zpool list -H -o name 2>/dev/null | grep -E '^jptest[0-9]+$' || true); do
    zpool destroy -f "$stale" 2>/dev/null || true
done
for old in /var/tmp/jetpack-test.*; do [ "$old" = "$workdir" ] || rm -rf "$old"; done
truncate -s 3G "$workdir/pool.img"
zpool create -f -m none "$pool" "$workdir/pool.img"
export JETPACK_TEST_POOL="$pool"

# --- the suite (ruff and mypy run inside it, tests/test_tooling.py) ---
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "scripts/test.sh: pytest collected no tests" >&2
fi
exit "$status"
