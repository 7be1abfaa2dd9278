#!/bin/sh
# build.sh [RELEASE] [OUT.aci]: a `freebsd-base` ACI from FreeBSD's base.txz, as the original
# 3ofcoins/jetpack built its base image: fetch base.txz, extract it into a rootfs directory,
# write the manifest, pack with ../mkaci.sh. Run as root on FreeBSD (owners and flags must
# survive extraction). Import the result with `jetpack import OUT.aci`, or skip packing with
# `jetpack build --from-dir build/rootfs build/manifest` (set NO_PACK=1).
#
#   RELEASE   FreeBSD release to fetch (default: the host's, e.g. 14.1-RELEASE)
#   OUT.aci   where to write the ACI (default: freebsd-base.aci)
#   MIRROR    download mirror (default: https://download.freebsd.org/releases)
#   BASE_TXZ  use this base.txz instead of fetching one
set -eu
here=$(cd "$(dirname "$0")" && pwd)
release=${1:-$(uname -r | sed -e 's/-p[0-9]*$//')}
out=${2:-freebsd-base.aci}
mirror=${MIRROR:-https://download.freebsd.org/releases}
arch=$(uname -m)
build=build

if [ "$(uname -s)" != FreeBSD ]; then
    echo "build.sh: this builds a FreeBSD image; run it on FreeBSD" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "build.sh: run as root (base.txz holds files owned by root and other users)" >&2
    exit 1
fi

rm -rf "$build"
mkdir -p "$build/rootfs"
if [ -n "${BASE_TXZ:-}" ]; then
    txz=$BASE_TXZ
else
    txz=$build/base.txz
    fetch -o "$txz" "$mirror/$arch/$release/base.txz"
fi
# -p keeps modes, owners and file flags (schg on some binaries: an ACI cannot hold flags, so
# they are cleared below before packing).
tar -C "$build/rootfs" -xpf "$txz"
chflags -R noschg,nosunlnk "$build/rootfs"
# A container does not boot: its kernel and boot loader are dead weight.
rm -rf "$build/rootfs/boot/kernel" "$build/rootfs/boot/loader"*
# Name resolution and time zone from the host, as the original's base image did.
cp /etc/resolv.conf "$build/rootfs/etc/resolv.conf" 2>/dev/null || true
cp /etc/localtime "$build/rootfs/etc/localtime" 2>/dev/null || true

version=$(echo "$release" | sed -e 's/-RELEASE$//')
sed -e "s/@OS@/freebsd/g" -e "s/@ARCH@/$arch/g" -e "s/@VERSION@/$version/g" \
    "$here/manifest.in" > "$build/manifest"
if [ -n "${NO_PACK:-}" ]; then
    echo "rootfs in $build/rootfs, manifest in $build/manifest"
    exit 0
fi
sh "$here/../mkaci.sh" "$build" "$out"
rm -rf "$build"
echo "$out"
